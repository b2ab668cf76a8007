"""Claims, leases and their renewal, release, and the worker registry."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.db.models import (
    Job,
    Round,
    Run,
    RunState,
)
from runner.db.models import Worker as WorkerRow
from runner.db.queue._common import (
    QueueEngine,
    _in_rounds,
    _not_for,
    _retry_deadlock,
    _transaction,
    sent_request,
    visible_runs,
)
from runner.db.types import UTCDateTime

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
    api: str = "chat"  # the job's request kind (runner.kinds.Api)


_RETURNING = (Run.id, Run.round_id, Run.job_id, Run.attempts, Run.max_attempts)
_NOW = bindparam("now", type_=UTCDateTime())


@dataclass(frozen=True)
class _ClaimStatements:
    """A claim's statements, built once per kind of scope and run with bound values.

    A claim runs every few dozen runs, so building its statements anew (and their
    cache keys) each time would cost a good part of a claim.
    """

    fail_exhausted: Any
    take_back: Any
    take_queued: Any
    with_jobs: Any


@functools.cache
def _claim_statements(in_rounds: bool, excluding: bool) -> _ClaimStatements:
    rounds = Run.round_id.in_(bindparam("round_ids", expanding=True)) if in_rounds else true()
    endpoints = _not_for(bindparam("exclude", expanding=True)) if excluding else true()
    scope = and_(rounds, endpoints, visible_runs())
    # Another worker's expired leases: a live worker never takes back its own runs (after a
    # database outage their leases may have run out while it still holds their results).
    expired = and_(
        Run.state == RunState.RUNNING.value,
        Run.lease_expires_at < _NOW,
        Run.lease_owner != bindparam("owner"),
        scope,
    )
    limit = bindparam("limit", type_=Integer())
    lease: dict[str, Any] = {
        "lease_owner": bindparam("owner"),
        "lease_expires_at": bindparam("expires"),
    }

    def pick(*where: Any, order: tuple[Any, ...] = ()) -> Any:
        """Ids of up to ``limit`` runs matching ``where``, locked, skipping locked ones."""
        return (
            select(Run.id)
            .where(*where)
            .order_by(*order)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )

    # Whether the expired lease's try was sent: a worker writes that a few tens of ms after
    # sending (``runs.sent_attempt``). One that died first, or that had claimed the run
    # ahead of a free request slot, never sent it: taking it back does not count a try.
    sent = func.coalesce(Run.sent_attempt, 0) >= Run.attempts
    # A run whose worker died with no attempts left fails instead of looping forever.
    fail_exhausted = (
        update(Run)
        .where(Run.id.in_(pick(expired, sent, Run.attempts >= Run.max_attempts)))
        .values(
            state=RunState.FAILED.value,
            finished_at=_NOW,
            lease_owner=None,
            lease_expires_at=None,
            error_type="lease_expired",
            error_status=None,
            error_message="the worker running it stopped (lease expired) and no attempts are left",
        )
        .execution_options(synchronize_session=False)
    )
    take_back = (
        update(Run)
        .where(Run.id.in_(pick(expired, order=(Run.lease_expires_at,))))
        .values(**lease, attempts=Run.attempts + case((sent, 1), else_=0))
        .returning(*_RETURNING)
    )
    queued = pick(
        Run.state == RunState.QUEUED.value,
        Run.available_at <= _NOW,
        scope,
        order=(Run.available_at, Run.id),
    )
    take_queued = (
        update(Run)
        .where(Run.id.in_(queued))
        .values(
            state=RunState.RUNNING.value,
            **lease,
            attempts=Run.attempts + 1,
            started_at=func.coalesce(Run.started_at, _NOW),
        )
        .returning(*_RETURNING)
    )
    with_jobs = (
        select(
            Run.id,
            Job.key,
            Job.endpoint,
            Job.model,
            Job.body,
            Job.batch_id,
            Job.api,
            Round.number,
            Round.endpoint.label("round_endpoint"),
            Round.model.label("round_model"),
            Round.samples.label("round_samples"),
        )
        .join(Job, Job.id == Run.job_id)
        .join(Round, Round.id == Run.round_id)
        .where(Run.id.in_(bindparam("run_ids", expanding=True)))
        .order_by(Run.id)
    )
    return _ClaimStatements(fail_exhausted, take_back, take_queued, with_jobs)


async def claim(
    engine: QueueEngine,
    owner: str,
    limit: int,
    *,
    lease: timedelta,
    now: datetime,
    round_ids: Sequence[int] | None = None,
    exclude_endpoints: Sequence[str] = (),
    take_back: bool = True,
) -> list[ClaimedRun]:
    """Lease up to ``limit`` runs: expired leases first, then queued runs in order.

    ``round_ids`` restricts the claim to those rounds (``runner run`` works only its own);
    runs for ``exclude_endpoints`` are left to other workers. ``take_back=False`` skips the
    look for expired leases (a busy worker does it about once a second, not every claim).
    """
    if limit <= 0:
        return []
    statements = _claim_statements(round_ids is not None, bool(exclude_endpoints))
    values: dict[str, Any] = {"now": now, "expires": now + lease, "owner": owner}
    if round_ids is not None:
        values["round_ids"] = list(round_ids)
    if exclude_endpoints:
        values["exclude"] = list(exclude_endpoints)

    def transaction(conn: Connection) -> list[ClaimedRun]:
        rows: list[Any] = []
        if take_back:
            conn.execute(statements.fail_exhausted, {**values, "limit": limit})
            rows += conn.execute(statements.take_back, {**values, "limit": limit})
        if len(rows) < limit:
            rows += conn.execute(statements.take_queued, {**values, "limit": limit - len(rows)})
        # In the same transaction: a claim is one connection and one commit.
        return _with_jobs(conn, statements.with_jobs, rows) if rows else []

    return await _transaction(engine, transaction)


def _with_jobs(conn: Connection, statement: Any, rows: Sequence[Any]) -> list[ClaimedRun]:
    """Attach the (immutable) job and round of each claimed run: one query."""
    by_run = {row.id: row for row in rows}
    found = conn.execute(statement, {"run_ids": sorted(by_run)})
    claimed = []
    for job in found:
        row = by_run[job.id]
        # A replay round may send the job elsewhere, to another model or ask for other
        # numbers of samples (see ``replay``).
        sent = sent_request(
            job.endpoint,
            job.model,
            job.body,
            endpoint_override=job.round_endpoint,
            model_override=job.round_model,
            samples_override=job.round_samples,
            api=job.api,
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
                round_number=job.number,
                api=job.api,
            )
        )
    return claimed


async def heartbeat(
    engine: AsyncEngine, owner: str, run_ids: Iterable[int], *, lease: timedelta, now: datetime
) -> set[int]:
    """Extend the leases ``owner`` still holds among ``run_ids``; returns those ids.

    Only the runs the worker names: a run it no longer tracks (however that came about)
    is left to expire and be taken back, never renewed forever.
    """
    ids = sorted(run_ids)
    if not ids:
        return set()
    held = (
        select(Run.id)
        .where(Run.id.in_(ids), Run.state == RunState.RUNNING.value, Run.lease_owner == owner)
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


async def database_now(engine: AsyncEngine) -> datetime:
    """The database server's clock, now (PostgreSQL: ``clock_timestamp()``, not the
    transaction's start)."""
    async with engine.connect() as conn:
        now = await conn.scalar(select(func.clock_timestamp()))
    if not isinstance(now, datetime):
        raise TypeError(f"clock_timestamp() returned {now!r}")
    return now


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


# ---------------------------------------------------------------- what is left to claim


@dataclass(frozen=True)
class LaterRuns:
    """Queued runs of one round that no claim takes before ``until`` (their earliest
    ``available_at``): a retry's backoff, or a time set by a clock ahead (``--now``)."""

    batch_id: int
    round_number: int
    runs: int
    until: datetime


@dataclass(frozen=True)
class Unfinished:
    """Runs still queued or running, and which of them cannot be claimed yet."""

    queued: int = 0
    running: int = 0
    later: tuple[LaterRuns, ...] = ()  # by ``until``, soonest first

    @property
    def count(self) -> int:
        return self.queued + self.running


async def unfinished(
    engine: AsyncEngine,
    round_ids: Sequence[int] | None,
    exclude_endpoints: Sequence[str],
    now: datetime,
) -> Unfinished:
    """Runs (in ``round_ids``, or anywhere) a burst worker still waits for, at ``now``."""
    scope = (_in_rounds(round_ids), _not_for(exclude_endpoints), visible_runs())
    unfinished_states = [RunState.QUEUED.value, RunState.RUNNING.value]
    async with engine.connect() as conn:
        counts = dict(
            (state, int(n))
            for state, n in await conn.execute(
                select(Run.state, func.count())
                .where(Run.state.in_(unfinished_states), *scope)
                .group_by(Run.state)
            )
        )
        later = await _later_runs(conn, scope, now) if counts.get(RunState.QUEUED.value) else []
    return Unfinished(
        queued=counts.get(RunState.QUEUED.value, 0),
        running=counts.get(RunState.RUNNING.value, 0),
        later=tuple(later),
    )


async def _later_runs(conn: AsyncConnection, scope: Any, now: datetime) -> list[LaterRuns]:
    until = func.min(Run.available_at)
    rows = await conn.execute(
        select(Round.batch_id, Round.number, func.count(), until)
        .join(Round, Round.id == Run.round_id)
        .where(Run.state == RunState.QUEUED.value, Run.available_at > now, *scope)
        .group_by(Round.batch_id, Round.number)
        .order_by(until, Round.batch_id, Round.number)
    )
    return [LaterRuns(int(b), int(number), int(n), at) for b, number, n, at in rows]
