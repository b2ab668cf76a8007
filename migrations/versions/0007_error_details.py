"""what servers said about errors: their bodies and request ids (issue 14)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:30:00

``runs.error_body`` and ``attempts.error_body`` keep an error response's body exactly as
the server sent it (many servers' bodies are not OpenAI-shaped), and
``attempts.provider_request_id`` its ``x-request-id``. ``run_results`` gains
``error_body`` as its last column: PostgreSQL can add columns at the end of a view in
place (CREATE OR REPLACE), SQLite drops and creates it (it does not track the views
that read it, so ``fingerprint_history`` and ``round_summary`` stay as they are).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0005's run_results, with error_body at the end.
RUN_RESULTS = """
SELECT
    r.id AS run_id,
    j.batch_id AS batch_id,
    b.name AS batch_name,
    r.round_id AS round_id,
    ro.number AS round_number,
    ro."trigger" AS round_trigger,
    r.job_id AS job_id,
    j.key AS job_key,
    coalesce(ro.endpoint, j.endpoint) AS endpoint,
    coalesce(ro.model, j.model) AS model,
    r.response_model AS response_model,
    j.seed AS seed,
    r.system_fingerprint AS system_fingerprint,
    coalesce(r.request_hash, j.request_hash) AS request_hash,
    r.state AS state,
    r.attempts AS attempts,
    r.finish_reason AS finish_reason,
    r.output AS output,
    r.outputs AS outputs,
    r.prompt_tokens AS prompt_tokens,
    r.completion_tokens AS completion_tokens,
    r.total_tokens AS total_tokens,
    r.latency_ms AS latency_ms,
    r.error_type AS error_type,
    r.error_status AS error_status,
    r.error_message AS error_message,
    r.provider_request_id AS provider_request_id,
    r.reused_from_run_id AS reused_from_run_id,
    r.started_at AS started_at,
    r.finished_at AS finished_at,
    r.response AS response{extra}
FROM runs r
JOIN jobs j ON j.id = r.job_id
JOIN rounds ro ON ro.id = r.round_id
JOIN batches b ON b.id = j.batch_id
"""


# 0005's, unchanged: PostgreSQL drops it with run_results on the way down.
FINGERPRINT_HISTORY = """
CREATE VIEW fingerprint_history AS
SELECT
    endpoint,
    model,
    response_model,
    system_fingerprint,
    min(finished_at) AS first_seen,
    max(finished_at) AS last_seen,
    count(*) AS runs,
    count(DISTINCT batch_id) AS batches
FROM run_results
WHERE state = 'succeeded' AND reused_from_run_id IS NULL
GROUP BY endpoint, model, response_model, system_fingerprint
"""


def upgrade() -> None:
    op.add_column("runs", sa.Column("error_body", sa.Text(), nullable=True))
    op.add_column(
        "attempts", sa.Column("provider_request_id", sa.String(length=200), nullable=True)
    )
    op.add_column("attempts", sa.Column("error_body", sa.Text(), nullable=True))
    query = RUN_RESULTS.format(extra=",\n    r.error_body AS error_body")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE OR REPLACE VIEW run_results AS {query}")
    else:
        op.execute("DROP VIEW run_results")
        op.execute(f"CREATE VIEW run_results AS {query}")


def downgrade() -> None:
    # A view's columns cannot be taken away in place: drop it and what reads it.
    op.execute("DROP VIEW fingerprint_history")
    op.execute("DROP VIEW run_results")
    op.execute(f"CREATE VIEW run_results AS {RUN_RESULTS.format(extra='')}")
    op.execute(FINGERPRINT_HISTORY)
    op.drop_column("attempts", "error_body")
    op.drop_column("attempts", "provider_request_id")
    op.drop_column("runs", "error_body")
