"""provider batches: the OpenAI Batch API as a way for a round's requests to travel (issue 17)

``rounds.via`` says how a round's requests travel (``sync``: one HTTP request per try,
``batch``: provider batches); ``runs.via`` sends a batch round's run synchronously after
its line failed (an endpoint's ``batch_retry = "sync"``); ``schedules.via`` is what a
schedule's rounds use. ``provider_batches`` records each chunk of runs sent as one
provider batch, every step written before the next one that could be lost.
``model_prices`` gets the batch prices, and ``round_costs`` charges a batch round's runs
at them (half the synchronous price when none is set).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COSTS_HEAD = """
CREATE VIEW round_costs AS
SELECT
    j.batch_id AS batch_id,
    b.name AS batch_name,
    ro.id AS round_id,
    ro.number AS round_number,
    COALESCE(ro.model, j.model) AS model,
    COUNT(*) AS runs,
    SUM(r.prompt_tokens) AS prompt_tokens,
    SUM(r.completion_tokens) AS completion_tokens,
"""
_COSTS_TAIL = """
FROM runs r
JOIN jobs j ON j.id = r.job_id
JOIN rounds ro ON ro.id = r.round_id
JOIN batches b ON b.id = j.batch_id
LEFT JOIN model_prices p ON p.model = COALESCE(ro.model, j.model)
WHERE r.prompt_tokens IS NOT NULL
GROUP BY j.batch_id, b.name, ro.id, ro.number, COALESCE(ro.model, j.model),
         p.input_per_1m, p.output_per_1m
"""
OLD_COSTS = (
    _COSTS_HEAD
    + """    (SUM(r.prompt_tokens) * p.input_per_1m
     + SUM(r.completion_tokens) * p.output_per_1m) / 1000000.0 AS cost_usd"""
    + _COSTS_TAIL
)
# A run sent in a provider batch (its round's via, unless the run itself went sync) is
# charged the batch price: the model's, else half the synchronous one.
NEW_COSTS = (
    _COSTS_HEAD
    + """    SUM(CASE WHEN COALESCE(r.via, ro.via) = 'batch' THEN
            r.prompt_tokens * COALESCE(p.batch_input_per_1m, p.input_per_1m / 2)
            + r.completion_tokens * COALESCE(p.batch_output_per_1m, p.output_per_1m / 2)
        ELSE r.prompt_tokens * p.input_per_1m + r.completion_tokens * p.output_per_1m
        END) / 1000000.0 AS cost_usd"""
    + _COSTS_TAIL.replace(
        "p.output_per_1m\n", "p.output_per_1m, p.batch_input_per_1m, p.batch_output_per_1m\n"
    )
)


def _views_0005() -> ModuleType:
    """The migration that made ``round_summary``: its text is the base of the new one."""
    path = Path(__file__).with_name("0005_sql_views.py")
    spec = importlib.util.spec_from_file_location("runner_migration_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LAST_COLUMN = "    c.mean_similarity AS mean_similarity\n"


def _round_summary(with_via: bool) -> str:
    views = _views_0005()
    text: str = views.ROUND_SUMMARY.format(duration=views.DURATION[op.get_bind().dialect.name])
    assert _LAST_COLUMN in text
    if with_via:  # at the end: the view's earlier columns keep their places
        text = text.replace(_LAST_COLUMN, _LAST_COLUMN.rstrip("\n") + ",\n    ro.via AS via\n")
    return text


def upgrade() -> None:
    op.execute("DROP VIEW round_costs")
    op.execute("DROP VIEW round_summary")
    # No CHECK: SQLite adds one only by copying the table, which its views refer to.
    op.add_column(
        "rounds", sa.Column("via", sa.String(length=10), nullable=False, server_default="sync")
    )
    op.add_column("runs", sa.Column("via", sa.String(length=10), nullable=True))
    op.add_column("schedules", sa.Column("via", sa.String(length=10), nullable=True))
    op.add_column("model_prices", sa.Column("batch_input_per_1m", sa.Float(), nullable=True))
    op.add_column("model_prices", sa.Column("batch_output_per_1m", sa.Float(), nullable=True))
    op.create_table(
        "provider_batches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("round_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("input_bytes", sa.BigInteger(), nullable=True),
        sa.Column("input_file_id", sa.String(length=200), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("provider_batch_id", sa.String(length=200), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("provider_state", sa.String(length=30), nullable=True),
        sa.Column("completed_count", sa.Integer(), nullable=True),
        sa.Column("failed_count", sa.Integer(), nullable=True),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("output_file_id", sa.String(length=200), nullable=True),
        sa.Column("error_file_id", sa.String(length=200), nullable=True),
        sa.Column("errors", sa.Text(), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stored_count", sa.Integer(), nullable=True),
        sa.Column("requeued_count", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('preparing', 'uploaded', 'submitted', 'storing', 'done')",
            name="ck_provider_batches_state",
        ),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_provider_batches_claim", "provider_batches", ["state", "lease_expires_at"])
    op.create_index("ix_provider_batches_round", "provider_batches", ["round_id"])
    op.execute(NEW_COSTS)
    op.execute(_round_summary(with_via=True))


def downgrade() -> None:
    op.execute("DROP VIEW round_costs")
    op.execute("DROP VIEW round_summary")
    op.drop_index("ix_provider_batches_round", table_name="provider_batches")
    op.drop_index("ix_provider_batches_claim", table_name="provider_batches")
    op.drop_table("provider_batches")
    op.drop_column("model_prices", "batch_output_per_1m")
    op.drop_column("model_prices", "batch_input_per_1m")
    op.drop_column("schedules", "via")
    op.drop_column("runs", "via")
    op.drop_column("rounds", "via")
    op.execute(OLD_COSTS)
    op.execute(_round_summary(with_via=False))
