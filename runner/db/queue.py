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

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import anyio
from sqlalchemy import (
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.db.models import (
    Attempt,
    Batch,
    Comparison,
    ComparisonItem,
    Job,
    Round,
    RoundTrigger,
    Run,
    RunState,
)
from runner.db.models import Worker as WorkerRow
from runner.db.types import UTCDateTime
from runner.hashing import canonical_json

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


T = TypeVar("T")
DEADLOCK = "40P01"  # PostgreSQL's deadlock_detected

_RETURNING = (Run.id, Run.round_id, Run.job_id, Run.attempts, Run.max_attempts)


def _in_rounds(round_ids: Sequence[int] | None) -> Any:
    return true() if round_ids is None else Run.round_id.in_(list(round_ids))


def _not_for(endpoints: Sequence[str]) -> Any:
    """Runs whose job does not go to one of ``endpoints`` (a worker gave up on those)."""
    if not endpoints:
        return true()
    return ~exists().where(Job.id == Run.job_id, Job.endpoint.in_(list(endpoints)))


async def claim(
    engine: AsyncEngine,
    owner: str,
    limit: int,
    *,
    lease: timedelta,
    now: datetime,
    round_ids: Sequence[int] | None = None,
    exclude_endpoints: Sequence[str] = (),
) -> list[ClaimedRun]:
    """Lease up to ``limit`` runs: expired leases first, then queued runs in order.

    ``round_ids`` restricts the claim to those rounds (``runner run`` works only its own);
    runs for ``exclude_endpoints`` are left to other workers.
    """
    if limit <= 0:
        return []
    expires = now + lease
    scope = and_(_in_rounds(round_ids), _not_for(exclude_endpoints))
    expired = and_(Run.state == RunState.RUNNING.value, Run.lease_expires_at < now, scope)
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
                .where(Run.state == RunState.QUEUED.value, Run.available_at <= now, scope)
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
        rounds = {
            r.id: r
            for r in await conn.execute(
                select(Round.id, Round.number, Round.endpoint, Round.model).where(
                    Round.id.in_(round_ids)
                )
            )
        }
    claimed = []
    for row in sorted(rows, key=lambda r: r.id):
        job = jobs[row.job_id]
        rnd = rounds[row.round_id]
        # A replay round may send the job elsewhere or to another model (see ``replay``).
        sent = sent_request(
            job.endpoint,
            job.model,
            job.body,
            endpoint_override=rnd.endpoint,
            model_override=rnd.model,
        )
        claimed.append(
            ClaimedRun(
                run_id=row.id,
                round_id=row.round_id,
                job_id=row.job_id,
                attempt=row.attempts,
                max_attempts=row.max_attempts,
                key=job.key,
                endpoint=sent.endpoint,
                model=sent.model,
                body=sent.body,
                batch_id=job.batch_id,
                round_number=rnd.number,
            )
        )
    return claimed


async def heartbeat(
    engine: AsyncEngine, owner: str, *, lease: timedelta, now: datetime
) -> set[int]:
    """Extend every lease ``owner`` still holds; returns the ids it still holds."""
    held = (
        select(Run.id)
        .where(Run.state == RunState.RUNNING.value, Run.lease_owner == owner)
        .order_by(Run.id)
        .with_for_update()
    )

    async def renew() -> set[int]:
        async with engine.begin() as conn:
            result = await conn.execute(
                update(Run)
                .where(Run.id.in_(held.scalar_subquery()))
                .values(lease_expires_at=now + lease)
                .returning(Run.id)
            )
            return set(result.scalars())

    return await _retry_deadlock(renew)


async def _retry_deadlock(fn: Callable[[], Awaitable[T]], tries: int = 5) -> T:
    """Run a transaction again if PostgreSQL chose it as a deadlock victim (rolled back)."""
    for attempt in range(1, tries + 1):
        try:
            return await fn()
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != DEADLOCK or attempt == tries:
                raise
            await anyio.sleep(0.01 * attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- worker registry


async def register_worker(
    engine: AsyncEngine,
    worker_id: str,
    *,
    hostname: str,
    pid: int,
    concurrency: int,
    now: datetime,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(WorkerRow).values(
                id=worker_id,
                hostname=hostname,
                pid=pid,
                concurrency=concurrency,
                started_at=now,
                heartbeat_at=now,
            )
        )


async def worker_heartbeat(
    engine: AsyncEngine, worker_id: str, *, now: datetime, alive_within: timedelta
) -> int:
    """Renew this worker's registration, forget dead ones; returns how many are alive."""
    async with engine.begin() as conn:
        await conn.execute(
            update(WorkerRow).where(WorkerRow.id == worker_id).values(heartbeat_at=now)
        )
        await conn.execute(
            delete(WorkerRow).where(WorkerRow.heartbeat_at < now - 10 * alive_within)
        )
        alive = await conn.scalar(
            select(func.count())
            .select_from(WorkerRow)
            .where(WorkerRow.heartbeat_at >= now - alive_within)
        )
    return max(1, int(alive or 0))


async def unregister_worker(engine: AsyncEngine, worker_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))


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
    retry_after_ms: float | None = None  # what the server asked for, if anything
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


_STATE_AFTER = {
    "succeeded": RunState.SUCCEEDED.value,
    "failed": RunState.FAILED.value,
    "retry": RunState.QUEUED.value,
}


def _outcome_params(owner: str, o: Outcome) -> dict[str, Any]:
    done = o.outcome != "retry"
    return {
        **_params(owner, o),
        "b_state": _STATE_AFTER[o.outcome],
        "b_finished_at": o.finished_at if done else None,
        "b_available_at": o.finished_at if done else (o.retry_at or o.finished_at),
        "b_latency_ms": o.latency_ms,
        "b_error_type": o.error_type,
        "b_error_status": None if o.outcome == "succeeded" else o.http_status,
        "b_error_message": o.error_message,
        **{f"b_{c}": getattr(o, c) for c in _SUCCESS_COLUMNS},
    }


async def record(engine: AsyncEngine, owner: str, outcomes: Sequence[Outcome]) -> int:
    """Store a batch of outcomes in one transaction; returns how many were fenced out.

    One statement for every outcome, in run id order: PostgreSQL locks the rows in
    the same order as ``heartbeat`` and ``release`` do, so they cannot deadlock.
    """
    ordered = sorted(outcomes, key=lambda o: o.run_id)
    stmt = (
        update(Run)
        .where(_fence())
        .values(
            state=bindparam("b_state"),
            finished_at=bindparam("b_finished_at"),
            available_at=bindparam("b_available_at"),
            latency_ms=bindparam("b_latency_ms"),
            lease_owner=None,
            lease_expires_at=None,
            error_type=bindparam("b_error_type"),
            error_status=bindparam("b_error_status"),
            error_message=bindparam("b_error_message"),
            **{c: bindparam(f"b_{c}") for c in _SUCCESS_COLUMNS},
        )
    )
    attempts = [
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
            "retry_after_ms": o.retry_after_ms,
            "retry_at": o.retry_at,
        }
        for o in ordered
    ]

    async def write() -> int:
        async with engine.begin() as conn:
            result = await conn.execute(stmt, [_outcome_params(owner, o) for o in ordered])
            await conn.execute(insert(Attempt), attempts)
            return int(result.rowcount)

    applied = await _retry_deadlock(write)
    return len(outcomes) - applied


async def unfinished_count(
    engine: AsyncEngine,
    round_ids: Sequence[int] | None = None,
    exclude_endpoints: Sequence[str] = (),
) -> int:
    """Runs still queued or running (in ``round_ids``, or anywhere): burst workers exit at 0."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(Run)
            .where(
                Run.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]),
                _in_rounds(round_ids),
                _not_for(exclude_endpoints),
            )
        )
        return int(count or 0)


# ---------------------------------------------------------------- replay
#
# A replay round re-runs jobs of a batch. Its overrides are columns of the round
# (``rounds.endpoint``, ``rounds.model``), applied when a run is claimed (see
# ``sent_request``): a model override replaces only the body's ``model``, and the hash
# of the body that is then sent is stored in ``runs.request_hash``. ``--reuse`` copies
# a stored successful result of the same request to the same endpoint instead of
# sending it again (``runs.reused_from_run_id`` names the run that made the request).

REUSE_CHUNK = 500
ITEM_CHUNK = 1000

# What a reused run copies from the run whose result it takes.
_REUSED_COLUMNS = (*_SUCCESS_COLUMNS, "latency_ms")


@dataclass(frozen=True)
class SentRequest:
    """What a run of a job sends, and where, once its round's overrides are applied."""

    endpoint: str
    model: str
    body: str


def with_model(body: str, model: str) -> str:
    """The canonical ``body`` with only its ``model`` replaced (still canonical JSON)."""
    payload = json.loads(body)
    payload["model"] = model
    return canonical_json(payload)


def sent_request(
    endpoint: str,
    model: str,
    body: str,
    *,
    endpoint_override: str | None,
    model_override: str | None,
) -> SentRequest:
    """A job's endpoint, model and body with a round's overrides (None: the job's own)."""
    if model_override is None or model_override == model:
        return SentRequest(endpoint_override or endpoint, model, body)
    return SentRequest(
        endpoint_override or endpoint, model_override, with_model(body, model_override)
    )


def sent_endpoint() -> Any:
    """SQL: the endpoint a run's request goes to (its round's override, else its job's)."""
    return func.coalesce(Round.endpoint, Job.endpoint)


def sent_hash() -> Any:
    """SQL: the hash of the body a run sends (``runs.request_hash``, else its job's)."""
    return func.coalesce(Run.request_hash, Job.request_hash)


async def create_replay_round(
    conn: AsyncConnection,
    batch_id: int,
    *,
    now: datetime,
    endpoint: str | None,
    model: str | None,
    selection: str,
    reuse: bool,
) -> tuple[int, int]:
    """A new ``replay`` round with its overrides recorded; returns (round id, number)."""
    round_id, number = await create_round(conn, batch_id, RoundTrigger.REPLAY, now)
    await conn.execute(
        update(Round)
        .where(Round.id == round_id)
        .values(endpoint=endpoint, model=model, selection=selection, reuse=reuse)
    )
    return round_id, number


async def enqueue_jobs(
    conn: AsyncConnection,
    round_id: int,
    runs: Sequence[tuple[int, str | None]],
    *,
    max_attempts: int,
    now: datetime,
) -> int:
    """One queued run per ``(job id, hash of the body it sends, or None: the job's)``."""
    if not runs:
        return 0
    await conn.execute(
        insert(Run),
        [
            {
                "round_id": round_id,
                "job_id": job_id,
                "state": RunState.QUEUED.value,
                "attempts": 0,
                "max_attempts": max_attempts,
                "available_at": now,
                "request_hash": sent,
            }
            for job_id, sent in runs
        ],
    )
    return len(runs)


async def reuse_results(conn: AsyncConnection, round_id: int, now: datetime) -> int:
    """Turn queued runs of a round into copies of stored results of the same request.

    A stored result qualifies when its run succeeded, sent a body with the same hash to
    the same endpoint, and belongs to another round. The job's own latest result is
    preferred, else the latest one. Only untouched queued runs (no attempt yet) are
    changed, so a worker that already claimed one keeps it. Returns how many were reused.
    """
    targets = (
        await conn.execute(
            select(
                Run.id,
                Run.job_id,
                sent_hash().label("sent_hash"),
                sent_endpoint().label("sent_endpoint"),
            )
            .join(Job, Job.id == Run.job_id)
            .join(Round, Round.id == Run.round_id)
            .where(
                Run.round_id == round_id,
                Run.state == RunState.QUEUED.value,
                Run.attempts == 0,
            )
            .order_by(Run.id)
        )
    ).all()
    reused = 0
    for start in range(0, len(targets), REUSE_CHUNK):
        chunk = targets[start : start + REUSE_CHUNK]
        chosen = await _reusable(conn, round_id, chunk)
        if not chosen:
            continue
        sources = {
            row.id: row
            for row in await conn.execute(
                select(Run.id, *(getattr(Run, c) for c in _REUSED_COLUMNS)).where(
                    Run.id.in_(sorted({source for source, _ in chosen.values()}))
                )
            )
        }
        stmt = (
            update(Run)
            .where(
                Run.id == bindparam("b_run_id"),
                Run.state == RunState.QUEUED.value,
                Run.attempts == 0,
            )
            .values(
                state=RunState.SUCCEEDED.value,
                finished_at=now,
                reused_from_run_id=bindparam("b_reused_from"),
                error_type=None,
                error_status=None,
                error_message=None,
                **{c: bindparam(f"b_{c}") for c in _REUSED_COLUMNS},
            )
        )
        params = [
            {
                "b_run_id": run_id,
                "b_reused_from": origin,
                **{f"b_{c}": getattr(sources[source], c) for c in _REUSED_COLUMNS},
            }
            for run_id, (source, origin) in sorted(chosen.items())
        ]
        reused += int((await conn.execute(stmt, params)).rowcount)
    return reused


async def _reusable(
    conn: AsyncConnection, round_id: int, targets: Sequence[Any]
) -> dict[int, tuple[int, int]]:
    """For each target run that has one: (run to copy, run that made the request)."""
    hashes = sorted({t.sent_hash for t in targets})
    candidates = await conn.execute(
        select(
            Run.id,
            Run.job_id,
            Run.reused_from_run_id,
            sent_hash().label("sent_hash"),
            sent_endpoint().label("sent_endpoint"),
        )
        .join(Job, Job.id == Run.job_id)
        .join(Round, Round.id == Run.round_id)
        .where(
            Run.state == RunState.SUCCEEDED.value,
            Run.round_id != round_id,
            or_(
                Run.request_hash.in_(hashes),
                and_(Run.request_hash.is_(None), Job.request_hash.in_(hashes)),
            ),
        )
        .order_by(Run.id)
    )
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    own: dict[tuple[int, str, str], tuple[int, int]] = {}
    for c in candidates:  # ascending ids: the last one seen is the latest
        pick = (int(c.id), int(c.reused_from_run_id or c.id))
        latest[(c.sent_hash, c.sent_endpoint)] = pick
        own[(c.job_id, c.sent_hash, c.sent_endpoint)] = pick
    chosen = {}
    for t in targets:
        found = own.get((t.job_id, t.sent_hash, t.sent_endpoint)) or latest.get(
            (t.sent_hash, t.sent_endpoint)
        )
        if found is not None:
            chosen[int(t.id)] = found
    return chosen


async def insert_comparison(
    conn: AsyncConnection, comparison: dict[str, Any], items: Sequence[dict[str, Any]]
) -> int:
    """Store one comparison and its per-job items; returns the comparison id."""
    result = await conn.execute(insert(Comparison).values(**comparison).returning(Comparison.id))
    comparison_id = int(result.scalar_one())
    for start in range(0, len(items), ITEM_CHUNK):
        await conn.execute(
            insert(ComparisonItem),
            [
                {**item, "comparison_id": comparison_id}
                for item in items[start : start + ITEM_CHUNK]
            ],
        )
    return comparison_id
