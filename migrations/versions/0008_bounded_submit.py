"""batches still being written by a submit: batches.pending_until (issue 15)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:00:00

On SQLite a big submit writes its jobs and runs in many short transactions, so that
workers are never kept from the database lock for long. Until its last transaction
sets ``pending_until`` back to NULL, the batch is invisible: its runs are not claimed
and it is not listed. A submit that dies leaves it set: once that time has passed, the
next submit or worker start deletes the batch. Existing batches are complete (NULL).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("pending_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("batches", "pending_until")
