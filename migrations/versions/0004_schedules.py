"""schedules and drift reports (issue 6)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 03:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types (see 0001).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("batch_id", ID, nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=100), nullable=False),
        sa.Column("catch_up", sa.String(length=20), nullable=False),
        sa.Column("on_drift", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("since", UTC_TIME, nullable=False),
        sa.Column("paused_at", UTC_TIME, nullable=True),
        sa.CheckConstraint("catch_up IN ('latest', 'all')", name="ck_schedules_catch_up"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_schedules_name"),
    )
    # Plain ALTER TABLE ... ADD COLUMN on both backends, the reference inline (SQLite
    # accepts REFERENCES on a new column whose default is NULL). Never batch mode on
    # ``rounds``: on SQLite it copies the table and drops the old one, and with foreign
    # keys on that DROP cascades to ``runs`` and ``attempts`` (see 0003). No ON DELETE:
    # SQLite would not report it back; removing a schedule clears schedule_id itself.
    op.add_column(
        "rounds",
        sa.Column("schedule_id", ID, sa.ForeignKey("schedules.id"), nullable=True),
        inline_references=True,
    )
    op.add_column("rounds", sa.Column("scheduled_for", UTC_TIME, nullable=True))
    # A unique index, not a constraint: SQLite cannot add a constraint to a table.
    op.create_index(
        "uq_rounds_schedule_tick", "rounds", ["schedule_id", "scheduled_for"], unique=True
    )

    op.create_table(
        "drift_reports",
        sa.Column("id", ID, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("schedule_id", ID, nullable=True),
        sa.Column("batch_id", ID, nullable=False),
        sa.Column("round_id", ID, nullable=False),
        sa.Column("previous_round_id", ID, nullable=True),
        sa.Column("comparison_id", ID, nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("exact_matches", sa.Integer(), nullable=False),
        sa.Column("exact_match_rate", sa.Float(), nullable=True),
        sa.Column("mean_similarity", sa.Float(), nullable=True),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("fingerprint_changed", sa.Integer(), nullable=False),
        sa.Column("fingerprints_before", sa.Text(), nullable=True),
        sa.Column("fingerprints_after", sa.Text(), nullable=True),
        sa.Column("on_drift_command", sa.Text(), nullable=True),
        sa.Column("on_drift_state", sa.String(length=20), nullable=True),
        sa.Column("on_drift_worker", sa.String(length=200), nullable=True),
        sa.Column("on_drift_started_at", UTC_TIME, nullable=True),
        sa.Column("on_drift_finished_at", UTC_TIME, nullable=True),
        sa.Column("on_drift_exit_code", sa.Integer(), nullable=True),
        sa.Column("on_drift_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('failures', 'fingerprint_changed', 'outputs_changed', 'stable', "
            "'baseline')",
            name="ck_drift_reports_status",
        ),
        sa.CheckConstraint(
            "on_drift_state IN ('pending', 'running', 'succeeded', 'failed')",
            name="ck_drift_reports_on_drift_state",
        ),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["previous_round_id"], ["rounds.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparisons.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("round_id", name="uq_drift_reports_round"),
    )
    op.create_index("ix_drift_reports_schedule", "drift_reports", ["schedule_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_drift_reports_schedule", table_name="drift_reports")
    op.drop_table("drift_reports")
    # The index first: SQLite refuses to drop an indexed column. Plain DROP COLUMN, as
    # upgrade added them (the reference is the column's own, and goes with it).
    op.drop_index("uq_rounds_schedule_tick", table_name="rounds")
    op.drop_column("rounds", "scheduled_for")
    op.drop_column("rounds", "schedule_id")
    op.drop_table("schedules")
