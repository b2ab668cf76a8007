"""The durable queue: every statement that writes batches, jobs, rounds, runs or attempts.

One named function per statement (or per transaction that must stay together).
Runs move ``queued -> running -> succeeded | failed | queued (retry)``; a running
run has an owner and a lease. Claims take back runs whose lease expired, and every
write made on behalf of a claim is fenced on ``(state='running', lease_owner,
attempts)`` so a worker that lost its lease can never overwrite a newer result.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` so many workers never block on
or double-claim the same rows; on SQLite (where SQLAlchemy omits the clause)
``BEGIN IMMEDIATE`` serialises writers instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, literal, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.db.models import Attempt, Batch, Job, Round, RoundTrigger, Run, RunState
from runner.db.types import UTCDateTime

# ---------------------------------------------------------------- submit


async def insert_batch(
    conn: AsyncConnection,
    *,
    name: str,
    source_path: str,
    source_format: str,
    submitted_at: datetime,
) -> int:
    """A new batch row (job count and sha256 are set by ``complete_batch``)."""
    result = await conn.execute(
        insert(Batch)
        .values(
            name=name,
            source_path=source_path,
            source_format=source_format,
            source_sha256="",
            submitted_at=submitted_at,
            job_count=0,
        )
        .returning(Batch.id)
    )
    return int(result.scalar_one())


async def insert_jobs(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert a chunk of jobs (dicts with the Job columns)."""
    if rows:
        await conn.execute(insert(Job), list(rows))


async def complete_batch(
    conn: AsyncConnection, batch_id: int, *, job_count: int, source_sha256: str
) -> None:
    await conn.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(job_count=job_count, source_sha256=source_sha256)
    )


async def create_round(
    conn: AsyncConnection, batch_id: int, trigger: RoundTrigger, now: datetime
) -> tuple[int, int]:
    """A new round numbered after the batch's last one; returns (round id, number)."""
    last = await conn.scalar(
        select(func.coalesce(func.max(Round.number), 0)).where(Round.batch_id == batch_id)
    )
    number = int(last or 0) + 1
    result = await conn.execute(
        insert(Round)
        .values(batch_id=batch_id, number=number, trigger=trigger.value, created_at=now)
        .returning(Round.id)
    )
    return int(result.scalar_one()), number


async def enqueue_round(
    conn: AsyncConnection, round_id: int, batch_id: int, *, max_attempts: int, now: datetime
) -> int:
    """One queued run per job of the batch, in a single INSERT ... SELECT."""
    source = select(
        literal(round_id),
        Job.id,
        literal(RunState.QUEUED.value),
        literal(0),
        literal(max_attempts),
        literal(now, UTCDateTime()),
    ).where(Job.batch_id == batch_id)
    result = await conn.execute(
        insert(Run).from_select(
            ["round_id", "job_id", "state", "attempts", "max_attempts", "available_at"], source
        )
    )
    return int(result.rowcount)


# ---------------------------------------------------------------- claim


@dataclass(frozen=True)
class ClaimedRun:
    """A run this worker now holds a lease on, with the job it executes."""

    run_id: int
    round_id: int
    job_id: int
    attempt: int  # the attempt number this claim is (runs.attempts after the claim)
    max_attempts: int
    key: str = ""
    endpoint: str = ""
    model: str = ""
    body: str = ""
    batch_id: int = 0
    round_number: int = 0


_RETURNING = (Run.id, Run.round_id, Run.job_id, Run.attempts, Run.max_attempts)


def _in_rounds(round_ids: Sequence[int] | None) -> Any:
    return true() if round_ids is None else Run.round_id.in_(list(round_ids))


async def claim(
    engine: AsyncEngine,
    owner: str,
    limit: int,
    *,
    lease: timedelta,
    now: datetime,
    round_ids: Sequence[int] | None = None,
) -> list[ClaimedRun]:
    """Lease up to ``limit`` runs: expired leases first, then queued runs in order.

    ``round_ids`` restricts the claim to those rounds (``runner run`` works only its own).
    """
    if limit <= 0:
        return []
    expires = now + lease
    expired = and_(
        Run.state == RunState.RUNNING.value, Run.lease_expires_at < now, _in_rounds(round_ids)
    )
    async with engine.begin() as conn:
        # A run whose worker died with no attempts left fails instead of looping forever.
        exhausted = (
            select(Run.id)
            .where(expired, Run.attempts >= Run.max_attempts)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        await conn.execute(
            update(Run)
            .where(Run.id.in_(exhausted.scalar_subquery()))
            .values(
                state=RunState.FAILED.value,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                error_type="lease_expired",
                error_status=None,
                error_message="the worker running it stopped (lease expired) "
                "and no attempts are left",
            )
            .execution_options(synchronize_session=False)
        )
        retaken = (
            select(Run.id)
            .where(expired)
            .order_by(Run.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = list(
            await conn.execute(
                update(Run)
                .where(Run.id.in_(retaken.scalar_subquery()))
                .values(lease_owner=owner, lease_expires_at=expires, attempts=Run.attempts + 1)
                .returning(*_RETURNING)
            )
        )
        if len(rows) < limit:
            queued = (
                select(Run.id)
                .where(
                    Run.state == RunState.QUEUED.value,
                    Run.available_at <= now,
                    _in_rounds(round_ids),
                )
                .order_by(Run.available_at, Run.id)
                .limit(limit - len(rows))
                .with_for_update(skip_locked=True)
            )
            rows += list(
                await conn.execute(
                    update(Run)
                    .where(Run.id.in_(queued.scalar_subquery()))
                    .values(
                        state=RunState.RUNNING.value,
                        lease_owner=owner,
                        lease_expires_at=expires,
                        attempts=Run.attempts + 1,
                        started_at=func.coalesce(Run.started_at, literal(now, UTCDateTime())),
                    )
                    .returning(*_RETURNING)
                )
            )
    if not rows:
        return []
    return await _with_jobs(engine, rows)


async def _with_jobs(engine: AsyncEngine, rows: Sequence[Any]) -> list[ClaimedRun]:
    """Attach the (immutable) job of each claimed run, read after the claim committed."""
    job_ids = sorted({row.job_id for row in rows})
    round_ids = sorted({row.round_id for row in rows})
    async with engine.connect() as conn:
        jobs = {
            j.id: j
            for j in await conn.execute(
                select(Job.id, Job.key, Job.endpoint, Job.model, Job.body, Job.batch_id).where(
                    Job.id.in_(job_ids)
                )
            )
        }
        rounds = dict(
            (
                await conn.execute(select(Round.id, Round.number).where(Round.id.in_(round_ids)))
            ).all()
        )
    claimed = []
    for row in sorted(rows, key=lambda r: r.id):
        job = jobs[row.job_id]
        claimed.append(
            ClaimedRun(
                run_id=row.id,
                round_id=row.round_id,
                job_id=row.job_id,
                attempt=row.attempts,
                max_attempts=row.max_attempts,
                key=job.key,
                endpoint=job.endpoint,
                model=job.model,
                body=job.body,
                batch_id=job.batch_id,
                round_number=rounds[row.round_id],
            )
        )
    return claimed


async def heartbeat(
    engine: AsyncEngine, owner: str, *, lease: timedelta, now: datetime
) -> set[int]:
    """Extend every lease ``owner`` still holds; returns the ids it still holds."""
    async with engine.begin() as conn:
        result = await conn.execute(
            update(Run)
            .where(Run.state == RunState.RUNNING.value, Run.lease_owner == owner)
            .values(lease_expires_at=now + lease)
            .returning(Run.id)
        )
        return set(result.scalars())


async def release(engine: AsyncEngine, owner: str, run_ids: Iterable[int], now: datetime) -> int:
    """Put runs this worker gave up on (graceful stop) back to ``queued``.

    Their attempt did not complete, so it is not counted.
    """
    ids = sorted(run_ids)
    if not ids:
        return 0
    async with engine.begin() as conn:
        result = await conn.execute(
            update(Run)
            .where(Run.id.in_(ids), Run.state == RunState.RUNNING.value, Run.lease_owner == owner)
            .values(
                state=RunState.QUEUED.value,
                lease_owner=None,
                lease_expires_at=None,
                available_at=now,
                attempts=Run.attempts - 1,
            )
        )
        return int(result.rowcount)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Outcome:
    """The result of one HTTP try of a claimed run, ready to be stored."""

    run_id: int
    attempt: int
    started_at: datetime
    finished_at: datetime
    latency_ms: float
    # succeeded: the run is done; retry: back to queued at retry_at; failed: done, with error.
    outcome: str
    http_status: int | None = None
    retry_at: datetime | None = None
    # success fields
    response: str | None = None
    output: str | None = None
    outputs: str | None = None
    finish_reason: str | None = None
    response_model: str | None = None
    system_fingerprint: str | None = None
    provider_request_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    # failure fields
    error_type: str | None = None
    error_message: str | None = None


def _fence() -> Any:
    return and_(
        Run.id == bindparam("b_run_id"),
        Run.state == RunState.RUNNING.value,
        Run.lease_owner == bindparam("b_owner"),
        Run.attempts == bindparam("b_attempt"),
    )


_SUCCESS_COLUMNS = (
    "response",
    "output",
    "outputs",
    "finish_reason",
    "response_model",
    "system_fingerprint",
    "provider_request_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)


def _params(owner: str, outcome: Outcome) -> dict[str, Any]:
    return {"b_run_id": outcome.run_id, "b_owner": owner, "b_attempt": outcome.attempt}


async def record(engine: AsyncEngine, owner: str, outcomes: Sequence[Outcome]) -> int:
    """Store a batch of outcomes in one transaction; returns how many were fenced out."""
    groups: dict[str, list[Outcome]] = {"succeeded": [], "failed": [], "retry": []}
    for item in outcomes:
        groups[item.outcome].append(item)
    applied = 0
    async with engine.begin() as conn:
        if groups["succeeded"]:
            stmt = (
                update(Run)
                .where(_fence())
                .values(
                    state=RunState.SUCCEEDED.value,
                    finished_at=bindparam("b_finished_at"),
                    latency_ms=bindparam("b_latency_ms"),
                    lease_owner=None,
                    lease_expires_at=None,
                    error_type=None,
                    error_status=None,
                    error_message=None,
                    **{c: bindparam(f"b_{c}") for c in _SUCCESS_COLUMNS},
                )
            )
            params = [
                {
                    **_params(owner, o),
                    "b_finished_at": o.finished_at,
                    "b_latency_ms": o.latency_ms,
                    **{f"b_{c}": getattr(o, c) for c in _SUCCESS_COLUMNS},
                }
                for o in groups["succeeded"]
            ]
            applied += (await conn.execute(stmt, params)).rowcount
        for kind in ("failed", "retry"):
            if not groups[kind]:
                continue
            final = kind == "failed"
            stmt = (
                update(Run)
                .where(_fence())
                .values(
                    state=RunState.FAILED.value if final else RunState.QUEUED.value,
                    finished_at=bindparam("b_finished_at"),
                    available_at=bindparam("b_available_at"),
                    latency_ms=bindparam("b_latency_ms"),
                    lease_owner=None,
                    lease_expires_at=None,
                    error_type=bindparam("b_error_type"),
                    error_status=bindparam("b_error_status"),
                    error_message=bindparam("b_error_message"),
                )
            )
            params = [
                {
                    **_params(owner, o),
                    "b_finished_at": o.finished_at if final else None,
                    "b_available_at": o.finished_at if final else (o.retry_at or o.finished_at),
                    "b_latency_ms": o.latency_ms,
                    "b_error_type": o.error_type,
                    "b_error_status": o.http_status,
                    "b_error_message": o.error_message,
                }
                for o in groups[kind]
            ]
            applied += (await conn.execute(stmt, params)).rowcount
        await conn.execute(
            insert(Attempt),
            [
                {
                    "run_id": o.run_id,
                    "number": o.attempt,
                    "worker": owner,
                    "started_at": o.started_at,
                    "latency_ms": o.latency_ms,
                    "outcome": o.outcome,
                    "http_status": o.http_status,
                    "error_type": o.error_type,
                    "error_message": o.error_message,
                }
                for o in outcomes
            ],
        )
    return len(outcomes) - applied


async def unfinished_count(engine: AsyncEngine, round_ids: Sequence[int] | None = None) -> int:
    """Runs still queued or running (in ``round_ids``, or anywhere): burst workers exit at 0."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(Run)
            .where(
                Run.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]),
                _in_rounds(round_ids),
            )
        )
        return int(count or 0)
