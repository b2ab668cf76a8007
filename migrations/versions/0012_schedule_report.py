"""schedules.report: the HTML report a schedule rewrites after each drift report (issue 20)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 14:00:00

``runner schedule add --report PATH`` stores PATH (with ``{date}`` / ``{round}``
placeholders); after each drift report of the schedule, the worker that made the report
writes the batch's HTML report there (``runner.htmlreport``), atomically. NULL: none.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("schedules", sa.Column("report", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("schedules", "report")
