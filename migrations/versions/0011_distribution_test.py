"""the two-sample distribution test of comparisons and drift reports (issue 16)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 11:30:00

Against real endpoints outputs differ from round to round even when nothing changed
(seeds are best effort, sampling at temperature > 0). A comparison now also tests
whether round B's output distribution is round A's (MMD over the jobs' samples, a
permutation p-value): ``comparisons.distribution`` and the ``test_*`` columns, and per
job ``comparison_items.test_contribution`` / ``test_p_value``. Drift reports get two
new statuses, ``within_noise`` and ``distribution_changed``, with the p-value and the
schedule's ``alpha``. Existing reports keep their status (``outputs_changed``: no test
was made) and read as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "'failures', 'fingerprint_changed', 'outputs_changed', 'stable', 'baseline'"
NEW_STATUSES = OLD_STATUSES + ", 'within_noise', 'distribution_changed'"


def _status_check(statuses: str) -> None:
    with op.batch_alter_table("drift_reports") as batch:
        batch.drop_constraint("ck_drift_reports_status", type_="check")
        batch.create_check_constraint("ck_drift_reports_status", f"status IN ({statuses})")


def upgrade() -> None:
    for name, kind in (
        ("distribution", sa.String(20)),
        ("alpha", sa.Float()),
        ("test_statistic", sa.Float()),
        ("test_p_value", sa.Float()),
        ("test_samples_a", sa.Integer()),
        ("test_samples_b", sa.Integer()),
        ("test_jobs", sa.Integer()),
        ("test_permutations", sa.Integer()),
        ("test_seed", sa.BigInteger()),
        ("test_kernel", sa.String(50)),
        ("test_note", sa.Text()),
    ):
        op.add_column("comparisons", sa.Column(name, kind, nullable=True))
    op.add_column("comparison_items", sa.Column("test_contribution", sa.Float(), nullable=True))
    op.add_column("comparison_items", sa.Column("test_p_value", sa.Float(), nullable=True))
    op.add_column("schedules", sa.Column("alpha", sa.Float(), nullable=True))
    op.add_column("drift_reports", sa.Column("p_value", sa.Float(), nullable=True))
    op.add_column("drift_reports", sa.Column("alpha", sa.Float(), nullable=True))
    _status_check(NEW_STATUSES)


def downgrade() -> None:
    op.execute(
        "UPDATE drift_reports SET status = 'outputs_changed' "
        "WHERE status IN ('within_noise', 'distribution_changed')"
    )
    _status_check(OLD_STATUSES)
    op.drop_column("drift_reports", "alpha")
    op.drop_column("drift_reports", "p_value")
    op.drop_column("schedules", "alpha")
    op.drop_column("comparison_items", "test_p_value")
    op.drop_column("comparison_items", "test_contribution")
    for name in (
        "test_note", "test_kernel", "test_seed", "test_permutations", "test_jobs",
        "test_samples_b", "test_samples_a", "test_p_value", "test_statistic", "alpha",
        "distribution",
    ):  # fmt: skip
        op.drop_column("comparisons", name)
