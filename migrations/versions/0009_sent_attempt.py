"""the last try known to have been sent: runs.sent_attempt (issue 15)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:40:00

A worker claims runs ahead of its free request slots. When it is killed, the runs it
claimed but never sent are taken back by another worker; until now that counted a try
that never happened, so kills could fail runs that were never sent at all. Workers now
write, within a few tens of milliseconds of sending a request, the run's attempt number
into ``sent_attempt``; a lease taken back from a dead worker counts a try only if it
was sent. Runs already in the database have NULL: their leases, if any, are taken back
without counting the try.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("sent_attempt", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "sent_attempt")
