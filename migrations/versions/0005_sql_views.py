"""stable SQL views for users (issue 7): run_results, fingerprint_history, round_summary

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 03:15:00

The views are a public interface (docs/schema.md), so users need not know the joins.
The same SQL runs on SQLite and PostgreSQL except one expression: a duration in
seconds between two timestamps (ISO 8601 text on SQLite, timestamptz on PostgreSQL).

Views are not in the SQLAlchemy metadata, and autogenerate ignores them. On SQLite,
a later migration that rebuilds a table in batch mode (copy, drop, rename) must drop
these views first and create them again after: SQLite checks every view when a table
is renamed. Copy the SQL below into that migration (migrations are frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One row per run, with its batch, round and job, and the round's replay overrides
# applied: what was sent where, and what came back.
RUN_RESULTS = """
CREATE VIEW run_results AS
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
    r.response AS response
FROM runs r
JOIN jobs j ON j.id = r.job_id
JOIN rounds ro ON ro.id = r.round_id
JOIN batches b ON b.id = j.batch_id
"""

# Per endpoint / model asked / model returned / fingerprint: when it was first and last
# seen. Only runs that made a request (a --reuse copy saw nothing itself).
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

# Seconds from the first run's start to the last run's finish of a round.
DURATION = {
    "sqlite": "(julianday(s.last_finished_at) - julianday(s.first_started_at)) * 86400.0",
    "postgresql": "CAST(EXTRACT(EPOCH FROM (s.last_finished_at - s.first_started_at))"
    " AS DOUBLE PRECISION)",
}

# Per round: counts per state, tokens, timing, and the exact-match rate of the latest
# comparison of this round (as side B) with the nearest earlier round of its batch.
ROUND_SUMMARY = """
CREATE VIEW round_summary AS
SELECT
    ro.batch_id AS batch_id,
    b.name AS batch_name,
    ro.id AS round_id,
    ro.number AS round_number,
    ro."trigger" AS round_trigger,
    ro.endpoint AS endpoint_override,
    ro.model AS model_override,
    ro.created_at AS created_at,
    coalesce(s.runs, 0) AS runs,
    coalesce(s.queued, 0) AS queued,
    coalesce(s.running, 0) AS running,
    coalesce(s.succeeded, 0) AS succeeded,
    coalesce(s.failed, 0) AS failed,
    coalesce(s.cancelled, 0) AS cancelled,
    coalesce(s.prompt_tokens, 0) AS prompt_tokens,
    coalesce(s.completion_tokens, 0) AS completion_tokens,
    coalesce(s.total_tokens, 0) AS total_tokens,
    s.first_started_at AS first_started_at,
    s.last_finished_at AS last_finished_at,
    {duration} AS duration_seconds,
    c.id AS comparison_id,
    pr.number AS compared_round_number,
    c.exact_match_rate AS exact_match_rate,
    c.mean_similarity AS mean_similarity
FROM rounds ro
JOIN batches b ON b.id = ro.batch_id
LEFT JOIN (
    SELECT
        round_id,
        count(*) AS runs,
        sum(CASE WHEN state = 'queued' THEN 1 ELSE 0 END) AS queued,
        sum(CASE WHEN state = 'running' THEN 1 ELSE 0 END) AS running,
        sum(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END) AS succeeded,
        sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed,
        sum(CASE WHEN state = 'cancelled' THEN 1 ELSE 0 END) AS cancelled,
        sum(prompt_tokens) AS prompt_tokens,
        sum(completion_tokens) AS completion_tokens,
        sum(total_tokens) AS total_tokens,
        min(started_at) AS first_started_at,
        max(finished_at) AS last_finished_at
    FROM runs
    GROUP BY round_id
) s ON s.round_id = ro.id
LEFT JOIN comparisons c ON c.id = (
    SELECT c2.id
    FROM comparisons c2
    JOIN rounds ra ON ra.id = c2.round_a_id
    WHERE c2.round_b_id = ro.id AND ra.batch_id = ro.batch_id AND ra.number < ro.number
    ORDER BY ra.number DESC, c2.id DESC
    LIMIT 1
)
LEFT JOIN rounds pr ON pr.id = c.round_a_id
"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(RUN_RESULTS)
    op.execute(FINGERPRINT_HISTORY)
    op.execute(ROUND_SUMMARY.format(duration=DURATION[dialect]))


def downgrade() -> None:
    for view in ("round_summary", "fingerprint_history", "run_results"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
