"""Typed SQLAlchemy models: the documented, stable schema users query with SQL.

Alembic (``migrations/``) owns the schema; these models must match it, which the
test suite checks on both backends. See docs/schema.md for every column.
JSON documents are stored as text (canonical JSON for request bodies, the
response exactly as the endpoint returned it).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runner.db.types import UTCDateTime

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class RunState(enum.StrEnum):
    """Where a run is in its life. Values are stored as text."""

    QUEUED = "queued"  # waiting to be claimed (available_at may be in the future: backoff)
    RUNNING = "running"  # claimed by lease_owner until lease_expires_at
    SUCCEEDED = "succeeded"  # the endpoint answered; response, output and usage stored
    FAILED = "failed"  # permanent error, or out of attempts; error_* columns say why
    CANCELLED = "cancelled"  # cancelled by a user before it finished


class AttemptOutcome(enum.StrEnum):
    """What became of one try. Values are stored as text (``attempts.outcome``)."""

    SUCCEEDED = "succeeded"  # stored on its run: the run succeeded with this response
    RETRY = "retry"  # a retryable error stored on its run, which went back to the queue
    FAILED = "failed"  # an error stored on its run, which failed for good
    # Its endpoint was given up on (an invalid API key): the run went back to the queue
    # and the try does not count toward max_attempts (the next try has the same number).
    RELEASED = "released"
    # Not stored on its run: by the time it ended the run was no longer this worker's
    # (cancelled, or its lease expired and another worker took it back).
    DISCARDED = "discarded"


class RoundTrigger(enum.StrEnum):
    """Why a round exists."""

    SUBMIT = "submit"  # round 1, created when the job file was submitted
    REPLAY = "replay"  # a rerun asked for by a user
    SCHEDULE = "schedule"  # a tick of a schedule


def _states_check(column: str, enum_cls: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(m.value) for m in enum_cls)})"


class Base(DeclarativeBase):
    pass


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source_path: Mapped[str] = mapped_column(Text)
    source_format: Mapped[str] = mapped_column(String(20))
    source_sha256: Mapped[str] = mapped_column(String(64))
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    job_count: Mapped[int] = mapped_column(Integer)
    # A submit is still writing it (see runner/submit.py): invisible until NULL. Past
    # this time the submit died, and the next submit or worker start deletes it.
    pending_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("batch_id", "key", name="uq_jobs_batch_key"),
        Index("ix_jobs_request_hash", "request_hash"),
        # On PostgreSQL only (migration 0013): SQLite would have to copy the table.
        CheckConstraint("api IN ('chat', 'responses', 'embeddings')", name="ck_jobs_api"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(71))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    source_line: Mapped[int | None] = mapped_column(Integer)
    # Which API the body is for: a runner.kinds.Api value.
    api: Mapped[str] = mapped_column(String(20), default="chat", server_default="chat")


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("batch_id", "number", name="uq_rounds_batch_number"),
        CheckConstraint(_states_check("trigger", RoundTrigger), name="ck_rounds_trigger"),
        # One round per tick of a schedule, however many workers race to create it.
        Index("uq_rounds_schedule_tick", "schedule_id", "scheduled_for", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Replay overrides, recorded so the round says where its requests went (NULL: the job's).
    endpoint: Mapped[str | None] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(200))
    # Samples per run (the body's ``n``), for every job of the round (NULL: the job's).
    samples: Mapped[int | None] = mapped_column(Integer)
    # Which jobs a replay round covers ("all", "only-failed", "jobs,only-changed", ...).
    selection: Mapped[str | None] = mapped_column(String(100))
    # Whether stored results of identical requests were reused (``--reuse``).
    reuse: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A schedule's round: the schedule (NULL once it is removed) and the tick it is for.
    # No ON DELETE here: SQLite does not report one on a column added later, so removing
    # a schedule sets this to NULL itself (queue.delete_schedule).
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id"))
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("round_id", "job_id", name="uq_runs_round_job"),
        CheckConstraint(_states_check("state", RunState), name="ck_runs_state"),
        Index("ix_runs_claim", "state", "available_at", "id"),
        Index("ix_runs_lease", "state", "lease_expires_at"),
        Index("ix_runs_owner", "lease_owner"),
        Index("ix_runs_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    # The last attempt known to have been sent (written a few tens of ms after sending):
    # a lease taken back from a dead worker counts its try only if it was sent.
    sent_attempt: Mapped[int | None] = mapped_column(Integer)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Success: what the endpoint returned.
    response: Mapped[str | None] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    outputs: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(50))
    response_model: Mapped[str | None] = mapped_column(String(200))
    system_fingerprint: Mapped[str | None] = mapped_column(String(200))
    provider_request_id: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    # Several samples asked (``n`` > 1): whether one response held them all (False: the
    # endpoint ignored ``n`` and the rest came from further requests). NULL: one asked.
    n_honoured: Mapped[bool | None] = mapped_column(Boolean)
    # Responses API: the response's status and, when incomplete, why (JSON as returned).
    response_status: Mapped[str | None] = mapped_column(String(20))
    incomplete_details: Mapped[str | None] = mapped_column(Text)
    # Usage details any kind may report (NULL: the endpoint did not say).
    service_tier: Mapped[str | None] = mapped_column(String(50))
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    # Embeddings: every input's vector as little-endian float32, back to back.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    embedding_dimensions: Mapped[int | None] = mapped_column(Integer)
    # A job with a JSON schema: whether every output follows it (NULL: no schema asked).
    schema_valid: Mapped[bool | None] = mapped_column(Boolean)
    # Tool calls returned (chat: the first choice's): canonical [{"name", "arguments"}].
    tool_calls: Mapped[str | None] = mapped_column(Text)
    # Failure: the last error.
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_status: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    # The last error's body exactly as the server sent it (keys redacted), if it sent one.
    error_body: Mapped[str | None] = mapped_column(Text)
    # Replay: the hash of the body sent when a round's model override changed it
    # (NULL: the job's body was sent as it is, so jobs.request_hash is its hash).
    request_hash: Mapped[str | None] = mapped_column(String(71), index=True)
    # ``--reuse``: the id of the run whose stored result this run copied instead of sending
    # a request. Not a foreign key: adding one would make SQLite copy the whole table.
    reused_from_run_id: Mapped[int | None] = mapped_column(BigId)


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_run", "run_id", "number"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    latency_ms: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(20))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Retries: what the server asked (Retry-After) and when the run was queued again for.
    retry_after_ms: Mapped[float | None] = mapped_column(Float)
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the server said: its x-request-id (or the completion id), and an error's body.
    provider_request_id: Mapped[str | None] = mapped_column(String(200))
    error_body: Mapped[str | None] = mapped_column(Text)


class Worker(Base):
    """A running worker process, registered while it runs and renewed by its heartbeat.

    Workers sharing an endpoint divide its rate limits by the number of live workers.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FingerprintGroup(enum.StrEnum):
    """How the system_fingerprints of a compared job's two runs relate."""

    SAME = "same"  # both runs returned the same fingerprint
    CHANGED = "changed"  # both returned one, and they differ: expect other outputs
    UNKNOWN = "unknown"  # at least one returned none (null): nothing to go by


class Comparison(Base):
    """One ``runner compare``: two rounds (of one batch or two) matched by job key."""

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    batch_a_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    round_a_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    batch_b_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    round_b_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    matched: Mapped[int] = mapped_column(Integer)
    only_a: Mapped[int] = mapped_column(Integer)
    only_b: Mapped[int] = mapped_column(Integer)
    exact_matches: Mapped[int] = mapped_column(Integer)
    exact_match_rate: Mapped[float] = mapped_column(Float)
    mean_similarity: Mapped[float | None] = mapped_column(Float)
    min_similarity: Mapped[float | None] = mapped_column(Float)
    failed_a: Mapped[int] = mapped_column(Integer)
    failed_b: Mapped[int] = mapped_column(Integer)
    fingerprint_same: Mapped[int] = mapped_column(Integer)
    fingerprint_changed: Mapped[int] = mapped_column(Integer)
    fingerprint_unknown: Mapped[int] = mapped_column(Integer)
    embeddings_endpoint: Mapped[str | None] = mapped_column(String(100))
    embeddings_model: Mapped[str | None] = mapped_column(String(200))
    mean_embedding_distance: Mapped[float | None] = mapped_column(Float)
    # The two-sample test of the rounds' output distributions (runner.analysis.equality):
    # "same", "changed" (rejected at alpha) or "not_tested" (test_note says why).
    distribution: Mapped[str | None] = mapped_column(String(20))
    alpha: Mapped[float | None] = mapped_column(Float)
    test_statistic: Mapped[float | None] = mapped_column(Float)
    test_p_value: Mapped[float | None] = mapped_column(Float)
    test_samples_a: Mapped[int | None] = mapped_column(Integer)
    test_samples_b: Mapped[int | None] = mapped_column(Integer)
    test_jobs: Mapped[int | None] = mapped_column(Integer)
    test_permutations: Mapped[int | None] = mapped_column(Integer)
    test_seed: Mapped[int | None] = mapped_column(BigInteger)
    test_kernel: Mapped[str | None] = mapped_column(String(50))
    test_note: Mapped[str | None] = mapped_column(Text)


class ComparisonItem(Base):
    """One job of a comparison: its run on each side and how they differ."""

    __tablename__ = "comparison_items"
    __table_args__ = (
        UniqueConstraint("comparison_id", "key", name="uq_comparison_items_key"),
        CheckConstraint(
            _states_check("fingerprint", FingerprintGroup), name="ck_comparison_items_fingerprint"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    run_a_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    run_b_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    state_a: Mapped[str] = mapped_column(String(20))
    state_b: Mapped[str] = mapped_column(String(20))
    same_request: Mapped[bool] = mapped_column(Boolean)
    exact_match: Mapped[bool] = mapped_column(Boolean)
    similarity: Mapped[float | None] = mapped_column(Float)
    divergence_offset: Mapped[int | None] = mapped_column(Integer)
    fingerprint: Mapped[str | None] = mapped_column(String(20))
    same_model: Mapped[bool | None] = mapped_column(Boolean)
    prompt_tokens_delta: Mapped[int | None] = mapped_column(Integer)
    completion_tokens_delta: Mapped[int | None] = mapped_column(Integer)
    embedding_distance: Mapped[float | None] = mapped_column(Float)
    # This job's share of the distribution test's statistic, and its own p-value.
    test_contribution: Mapped[float | None] = mapped_column(Float)
    test_p_value: Mapped[float | None] = mapped_column(Float)


class CatchUpPolicy(enum.StrEnum):
    """Which missed ticks of a schedule run (see runner/scheduling/cron.py)."""

    LATEST = "latest"  # only the most recent missed tick
    ALL = "all"  # every missed tick, oldest first


class Schedule(Base):
    """A batch regenerated on a cron schedule: each tick becomes a round (trigger schedule)."""

    __tablename__ = "schedules"
    __table_args__ = (
        UniqueConstraint("name", name="uq_schedules_name"),
        CheckConstraint(_states_check("catch_up", CatchUpPolicy), name="ck_schedules_catch_up"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(100))
    catch_up: Mapped[str] = mapped_column(String(20))
    on_drift: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Ticks at or before this never run: when it was created, or last resumed.
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Samples per run its rounds ask for (``rounds.samples``; NULL: each job's own).
    samples: Mapped[int | None] = mapped_column(Integer)
    # Significance level of its drift reports' distribution test (NULL: 0.05).
    alpha: Mapped[float | None] = mapped_column(Float)
    # Where the batch's HTML report is rewritten after each drift report ({date}, {round}).
    report: Mapped[str | None] = mapped_column(Text)


class DriftStatus(enum.StrEnum):
    """What a scheduled round shows against the previous finished round of its batch.

    The first that applies wins, in this order.
    """

    FAILURES = "failures"  # a run of the scheduled round did not succeed
    BASELINE = "baseline"  # no earlier finished round to compare with
    # The distribution test rejects at the schedule's alpha: the model or its settings moved.
    DISTRIBUTION_CHANGED = "distribution_changed"
    FINGERPRINT_CHANGED = "fingerprint_changed"  # a job's system_fingerprint changed
    # Some outputs differ and no test could be made (one sample per job: see samples).
    OUTPUTS_CHANGED = "outputs_changed"
    WITHIN_NOISE = "within_noise"  # outputs differ; the test does not reject at alpha
    STABLE = "stable"  # every job succeeded with byte-identical outputs


class HookState(enum.StrEnum):
    """Where a drift report's on-drift command is (NULL: there is nothing to run)."""

    PENDING = "pending"  # to be run by the next worker that claims it
    RUNNING = "running"  # claimed by on_drift_worker (never run twice)
    SUCCEEDED = "succeeded"  # exited 0
    FAILED = "failed"  # non-zero exit, timeout, or could not start; on_drift_error says


class DriftReport(Base):
    """A finished scheduled round compared with the previous finished round of its batch."""

    __tablename__ = "drift_reports"
    __table_args__ = (
        UniqueConstraint("round_id", name="uq_drift_reports_round"),
        CheckConstraint(_states_check("status", DriftStatus), name="ck_drift_reports_status"),
        CheckConstraint(
            _states_check("on_drift_state", HookState), name="ck_drift_reports_on_drift_state"
        ),
        Index("ix_drift_reports_schedule", "schedule_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    previous_round_id: Mapped[int | None] = mapped_column(
        ForeignKey("rounds.id", ondelete="CASCADE")
    )
    comparison_id: Mapped[int | None] = mapped_column(
        ForeignKey("comparisons.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(30))
    matched: Mapped[int] = mapped_column(Integer)
    exact_matches: Mapped[int] = mapped_column(Integer)
    exact_match_rate: Mapped[float | None] = mapped_column(Float)
    mean_similarity: Mapped[float | None] = mapped_column(Float)
    failed: Mapped[int] = mapped_column(Integer)
    fingerprint_changed: Mapped[int] = mapped_column(Integer)
    fingerprints_before: Mapped[str | None] = mapped_column(Text)
    fingerprints_after: Mapped[str | None] = mapped_column(Text)
    # The distribution test's p-value (NULL: none made) and the alpha it was judged at.
    p_value: Mapped[float | None] = mapped_column(Float)
    alpha: Mapped[float | None] = mapped_column(Float)
    # Share of the round's runs with a JSON schema whose outputs follow it (NULL: none).
    schema_valid_rate: Mapped[float | None] = mapped_column(Float)
    on_drift_command: Mapped[str | None] = mapped_column(Text)
    on_drift_state: Mapped[str | None] = mapped_column(String(20))
    on_drift_worker: Mapped[str | None] = mapped_column(String(200))
    on_drift_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    on_drift_finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    on_drift_exit_code: Mapped[int | None] = mapped_column(Integer)
    on_drift_error: Mapped[str | None] = mapped_column(Text)


class ModelPrice(Base):
    """The price of a model as last configured ([prices."MODEL"] in runner.toml)."""

    __tablename__ = "model_prices"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    input_per_1m: Mapped[float] = mapped_column(Float)
    output_per_1m: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
