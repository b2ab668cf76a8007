"""samples per run: rounds.samples, schedules.samples, runs.n_honoured (issue 16)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 11:00:00

A run can ask for K samples (the body's ``n``): from the job file (``samples: K``), or
from its round (``--samples K`` on replay, verify and schedules), recorded as
``rounds.samples`` and applied when a run is claimed, like a model override. Servers
that ignore ``n`` (llama.cpp) return one choice: the worker then sends the rest as
separate requests and records ``runs.n_honoured`` = false.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("rounds", sa.Column("samples", sa.Integer(), nullable=True))
    op.add_column("schedules", sa.Column("samples", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("n_honoured", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "n_honoured")
    op.drop_column("schedules", "samples")
    op.drop_column("rounds", "samples")
