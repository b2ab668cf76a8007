"""request kinds: chat, responses and embeddings jobs (issue 18)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 14:30:00

``jobs.api`` says which OpenAI API a job's body is for (``chat`` for every existing
job). A run of a responses job stores what that API returns beside its text:
``runs.response_status`` (``completed`` / ``incomplete``…) and
``runs.incomplete_details``; every kind may report ``service_tier`` and cached /
reasoning token counts. An embeddings run keeps its vectors as float32 bytes
(``runs.embedding``, ``runs.embedding_dimensions``); a run of a job with a JSON
schema says whether its outputs follow it (``runs.schema_valid``); tool calls are kept
as canonical name + arguments (``runs.tool_calls``); a drift report
gives the share of valid outputs (``drift_reports.schema_valid_rate``).
``run_results`` gains the runs' new columns at its end (PostgreSQL adds them in place,
SQLite drops and creates the view, as 0007 does).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# run_results as 0007 left it; {extra} is the columns added at its end.
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
    r.response AS response,
    r.error_body AS error_body{extra}
FROM runs r
JOIN jobs j ON j.id = r.job_id
JOIN rounds ro ON ro.id = r.round_id
JOIN batches b ON b.id = j.batch_id
"""

NEW_COLUMNS = """,
    j.api AS api,
    r.response_status AS response_status,
    r.incomplete_details AS incomplete_details,
    r.service_tier AS service_tier,
    r.cached_tokens AS cached_tokens,
    r.reasoning_tokens AS reasoning_tokens,
    r.embedding AS embedding,
    r.embedding_dimensions AS embedding_dimensions,
    r.schema_valid AS schema_valid,
    r.tool_calls AS tool_calls"""

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

API_CHECK = "api IN ('chat', 'responses', 'embeddings')"


def _replace_run_results(extra: str) -> None:
    query = RUN_RESULTS.format(extra=extra)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE OR REPLACE VIEW run_results AS {query}")
    else:
        op.execute("DROP VIEW run_results")
        op.execute(f"CREATE VIEW run_results AS {query}")


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("api", sa.String(20), nullable=False, server_default=sa.text("'chat'"))
    )
    if op.get_bind().dialect.name == "postgresql":
        # SQLite could only add it by copying the jobs table (and cascading into runs).
        op.create_check_constraint("ck_jobs_api", "jobs", API_CHECK)
    for name, kind in (
        ("response_status", sa.String(20)),
        ("incomplete_details", sa.Text()),
        ("service_tier", sa.String(50)),
        ("cached_tokens", sa.Integer()),
        ("reasoning_tokens", sa.Integer()),
        ("embedding", sa.LargeBinary()),
        ("embedding_dimensions", sa.Integer()),
        ("schema_valid", sa.Boolean()),
        ("tool_calls", sa.Text()),
    ):
        op.add_column("runs", sa.Column(name, kind, nullable=True))
    op.add_column("drift_reports", sa.Column("schema_valid_rate", sa.Float(), nullable=True))
    _replace_run_results(NEW_COLUMNS)


def downgrade() -> None:
    # A view's columns cannot be taken away in place: drop it and what reads it.
    op.execute("DROP VIEW fingerprint_history")
    op.execute("DROP VIEW run_results")
    op.execute(f"CREATE VIEW run_results AS {RUN_RESULTS.format(extra='')}")
    op.execute(FINGERPRINT_HISTORY)
    op.drop_column("drift_reports", "schema_valid_rate")
    for name in (
        "tool_calls",
        "schema_valid",
        "embedding_dimensions",
        "embedding",
        "reasoning_tokens",
        "cached_tokens",
        "service_tier",
        "incomplete_details",
        "response_status",
    ):
        op.drop_column("runs", name)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("ck_jobs_api", "jobs", type_="check")
    op.drop_column("jobs", "api")
