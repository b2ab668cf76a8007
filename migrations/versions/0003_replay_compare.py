"""replay and compare: round overrides, reused results, stored comparisons

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 04:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types (see 0001).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("rounds", sa.Column("endpoint", sa.String(length=100), nullable=True))
    op.add_column("rounds", sa.Column("model", sa.String(length=200), nullable=True))
    op.add_column("rounds", sa.Column("selection", sa.String(length=100), nullable=True))
    op.add_column(
        "rounds", sa.Column("reuse", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    # Plain ALTER TABLE ... ADD COLUMN on both backends. Never batch mode on ``runs``:
    # on SQLite it copies the table and drops the old one, and that DROP cascades to
    # ``attempts`` (foreign keys are on). Hence no foreign key on reused_from_run_id.
    op.add_column("runs", sa.Column("request_hash", sa.String(length=71), nullable=True))
    op.add_column("runs", sa.Column("reused_from_run_id", ID, nullable=True))
    op.create_index("ix_runs_request_hash", "runs", ["request_hash"], unique=False)

    op.create_table(
        "comparisons",
        sa.Column("id", ID, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("batch_a_id", ID, nullable=False),
        sa.Column("round_a_id", ID, nullable=False),
        sa.Column("batch_b_id", ID, nullable=False),
        sa.Column("round_b_id", ID, nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("only_a", sa.Integer(), nullable=False),
        sa.Column("only_b", sa.Integer(), nullable=False),
        sa.Column("exact_matches", sa.Integer(), nullable=False),
        sa.Column("exact_match_rate", sa.Float(), nullable=False),
        sa.Column("mean_similarity", sa.Float(), nullable=True),
        sa.Column("min_similarity", sa.Float(), nullable=True),
        sa.Column("failed_a", sa.Integer(), nullable=False),
        sa.Column("failed_b", sa.Integer(), nullable=False),
        sa.Column("fingerprint_same", sa.Integer(), nullable=False),
        sa.Column("fingerprint_changed", sa.Integer(), nullable=False),
        sa.Column("fingerprint_unknown", sa.Integer(), nullable=False),
        sa.Column("embeddings_endpoint", sa.String(length=100), nullable=True),
        sa.Column("embeddings_model", sa.String(length=200), nullable=True),
        sa.Column("mean_embedding_distance", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["batch_a_id"], ["batches.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["batch_b_id"], ["batches.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["round_a_id"], ["rounds.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["round_b_id"], ["rounds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "comparison_items",
        sa.Column("id", ID, nullable=False),
        sa.Column("comparison_id", ID, nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("run_a_id", ID, nullable=False),
        sa.Column("run_b_id", ID, nullable=False),
        sa.Column("state_a", sa.String(length=20), nullable=False),
        sa.Column("state_b", sa.String(length=20), nullable=False),
        sa.Column("same_request", sa.Boolean(), nullable=False),
        sa.Column("exact_match", sa.Boolean(), nullable=False),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.Column("divergence_offset", sa.Integer(), nullable=True),
        sa.Column("fingerprint", sa.String(length=20), nullable=True),
        sa.Column("same_model", sa.Boolean(), nullable=True),
        sa.Column("prompt_tokens_delta", sa.Integer(), nullable=True),
        sa.Column("completion_tokens_delta", sa.Integer(), nullable=True),
        sa.Column("embedding_distance", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "fingerprint IN ('same', 'changed', 'unknown')", name="ck_comparison_items_fingerprint"
        ),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparisons.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_a_id"], ["runs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_b_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("comparison_id", "key", name="uq_comparison_items_key"),
    )


def downgrade() -> None:
    op.drop_table("comparison_items")
    op.drop_table("comparisons")
    op.drop_index("ix_runs_request_hash", table_name="runs")
    op.drop_column("runs", "reused_from_run_id")
    op.drop_column("runs", "request_hash")
    for column in ("reuse", "selection", "model", "endpoint"):
        op.drop_column("rounds", column)
