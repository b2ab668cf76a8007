"""model_prices and the round_costs view: tokens and cost per batch, round and model

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 03:50:00

``model_prices`` holds the prices last seen in a runner.toml ([prices."MODEL"]): every
command that opens the database copies the configured ones in. ``round_costs`` gives
tokens per batch, round and model, and their cost; the cost is NULL when the model
has no price (unknown, never 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUND_COSTS = """
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
    (SUM(r.prompt_tokens) * p.input_per_1m
     + SUM(r.completion_tokens) * p.output_per_1m) / 1000000.0 AS cost_usd
FROM runs r
JOIN jobs j ON j.id = r.job_id
JOIN rounds ro ON ro.id = r.round_id
JOIN batches b ON b.id = j.batch_id
LEFT JOIN model_prices p ON p.model = COALESCE(ro.model, j.model)
WHERE r.prompt_tokens IS NOT NULL
GROUP BY j.batch_id, b.name, ro.id, ro.number, COALESCE(ro.model, j.model),
         p.input_per_1m, p.output_per_1m
"""


def upgrade() -> None:
    op.create_table(
        "model_prices",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("input_per_1m", sa.Float(), nullable=False),
        sa.Column("output_per_1m", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )
    op.execute(ROUND_COSTS)


def downgrade() -> None:
    op.execute("DROP VIEW round_costs")
    op.drop_table("model_prices")
