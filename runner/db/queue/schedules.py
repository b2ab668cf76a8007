"""Schedules, their ticks (one round per tick) and drift reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy import (
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.db.models import (
    DriftReport,
    HookState,
    Job,
    Round,
    RoundTrigger,
    Run,
    Schedule,
)
from runner.db.queue._common import (
    _retry_deadlock,
)
from runner.db.queue.replay import enqueue_jobs, insert_comparison, sent_hashes
from runner.db.queue.submit import enqueue_round

# ---------------------------------------------------------------- schedules and drift reports
#
# A schedule's tick becomes a round (trigger ``schedule``) and its runs in ONE transaction.
# The unique index on ``rounds (schedule_id, scheduled_for)`` is the only arbiter: every
# worker that sees the tick due tries the INSERT (``ON CONFLICT DO NOTHING``) and exactly
# one gets a round id back. A drift report is made the same way (unique ``round_id``), and
# its on-drift command is claimed with a fenced UPDATE, so it runs at most once.

TICK_TRIES = 5
HASH_CHUNK = 2000  # jobs whose sent bodies are hashed at a time (rounds with --samples)


def _insert_or_nothing(conn: AsyncConnection, table: Any, columns: Sequence[str]) -> Any:
    """INSERT ... ON CONFLICT (columns) DO NOTHING, in the connection's dialect (imported
    here: a command on SQLite never needs the PostgreSQL dialect's modules)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=list(columns))
    from sqlalchemy.dialects.sqlite import insert

    return insert(table).on_conflict_do_nothing(index_elements=list(columns))


async def insert_schedule(
    conn: AsyncConnection,
    *,
    name: str,
    batch_id: int,
    cron: str,
    timezone: str,
    catch_up: str,
    on_drift: str | None,
    now: datetime,
    samples: int | None = None,
    alpha: float | None = None,
    report: str | None = None,
) -> int:
    """A new active schedule; its first tick is the first one after ``now``."""
    result = await conn.execute(
        insert(Schedule)
        .values(
            name=name,
            batch_id=batch_id,
            cron=cron,
            timezone=timezone,
            catch_up=catch_up,
            on_drift=on_drift,
            samples=samples,
            alpha=alpha,
            report=report,
            created_at=now,
            since=now,
            paused_at=None,
        )
        .returning(Schedule.id)
    )
    return int(result.scalar_one())


async def pause_schedule(engine: AsyncEngine, schedule_id: int, now: datetime) -> bool:
    """Pause an active schedule; False if it was already paused."""
    async with engine.begin() as conn:
        result = await conn.execute(
            update(Schedule)
            .where(Schedule.id == schedule_id, Schedule.paused_at.is_(None))
            .values(paused_at=now)
        )
        return bool(result.rowcount)


async def resume_schedule(engine: AsyncEngine, schedule_id: int, now: datetime) -> bool:
    """Resume a paused schedule; ticks that fell while it was paused never run."""
    async with engine.begin() as conn:
        result = await conn.execute(
            update(Schedule)
            .where(Schedule.id == schedule_id, Schedule.paused_at.is_not(None))
            .values(paused_at=None, since=now)
        )
        return bool(result.rowcount)


async def delete_schedule(engine: AsyncEngine, schedule_id: int) -> None:
    """Remove a schedule; its rounds and drift reports stay, with schedule_id NULL."""
    async with engine.begin() as conn:
        await conn.execute(
            update(Round).where(Round.schedule_id == schedule_id).values(schedule_id=None)
        )
        await conn.execute(
            update(DriftReport)
            .where(DriftReport.schedule_id == schedule_id)
            .values(schedule_id=None)
        )
        await conn.execute(delete(Schedule).where(Schedule.id == schedule_id))


@dataclass(frozen=True)
class TickRound:
    """The round a worker created for a schedule's tick."""

    schedule_id: int
    batch_id: int
    round_id: int
    number: int
    scheduled_for: datetime
    runs: int


async def tries_per_run(conn: AsyncConnection, batch_id: int) -> int | None:
    """The batch's tries per run as its first round had them (a job file may set it)."""
    first = (
        select(Round.id)
        .where(Round.batch_id == batch_id)
        .order_by(Round.number)
        .limit(1)
        .scalar_subquery()
    )
    value = await conn.scalar(select(func.max(Run.max_attempts)).where(Run.round_id == first))
    return int(value) if value is not None else None


async def create_tick_round(
    engine: AsyncEngine,
    schedule_id: int,
    scheduled_for: datetime,
    *,
    now: datetime,
    available_at: datetime,
    max_attempts: int,
    skip_if_newer: bool,
) -> TickRound | None:
    """The round of one tick with a queued run per job (claimable from ``available_at``),
    in one transaction.

    None when another worker made it first (the unique index), when the schedule is
    paused or gone, or (``skip_if_newer``: catch-up ``latest``) when a later tick
    already has a round. Scheduled rounds never reuse stored results.
    """

    async def write() -> TickRound | None:
        async with engine.begin() as conn:
            schedule = (
                await conn.execute(
                    select(Schedule.batch_id, Schedule.paused_at, Schedule.samples).where(
                        Schedule.id == schedule_id
                    )
                )
            ).one_or_none()
            if schedule is None or schedule.paused_at is not None:
                return None
            if skip_if_newer and await conn.scalar(
                select(Round.id)
                .where(Round.schedule_id == schedule_id, Round.scheduled_for >= scheduled_for)
                .limit(1)
            ):
                return None
            batch_id = int(schedule.batch_id)
            last = await conn.scalar(
                select(func.coalesce(func.max(Round.number), 0)).where(Round.batch_id == batch_id)
            )
            number = int(last or 0) + 1
            inserted = await conn.execute(
                _insert_or_nothing(conn, Round, ("schedule_id", "scheduled_for"))
                .values(
                    batch_id=batch_id,
                    number=number,
                    trigger=RoundTrigger.SCHEDULE.value,
                    created_at=now,
                    reuse=False,
                    samples=schedule.samples,
                    schedule_id=schedule_id,
                    scheduled_for=scheduled_for,
                )
                .returning(Round.id)
            )
            round_id = inserted.scalar_one_or_none()
            if round_id is None:
                return None  # another worker created this tick's round
            tries = await tries_per_run(conn, batch_id) or max_attempts
            if schedule.samples is None:
                await enqueue_round(conn, round_id, batch_id, max_attempts=tries, now=available_at)
            else:  # the bodies sent differ from the jobs': their hashes are the runs'
                jobs = select(Job.id).where(Job.batch_id == batch_id).order_by(Job.id)
                job_ids = list((await conn.execute(jobs)).scalars())
                for start in range(0, len(job_ids), HASH_CHUNK):
                    chunk = job_ids[start : start + HASH_CHUNK]
                    sent = await sent_hashes(conn, chunk, None, schedule.samples)
                    await enqueue_jobs(conn, round_id, sent, max_attempts=tries, now=available_at)
            # (rowcount of an INSERT ... SELECT is -1 through psycopg: count instead)
            runs = await conn.scalar(select(func.count()).where(Run.round_id == round_id))
            return TickRound(
                schedule_id, batch_id, int(round_id), number, scheduled_for, int(runs or 0)
            )

    for attempt in range(1, TICK_TRIES + 1):
        try:
            return await _retry_deadlock(write)
        except IntegrityError:
            # PostgreSQL: a racing worker's round took the same number (its insert can
            # hit (batch_id, number) before the tick's index). Try again: the tick's
            # round is then visible and this worker stops, or the number is free.
            if attempt == TICK_TRIES:
                raise
            await anyio.sleep(0.01 * attempt)
    raise AssertionError("unreachable")


class _ReportTaken(Exception):
    """Another worker stored this round's drift report first: roll ours back."""


async def insert_drift_report(
    engine: AsyncEngine,
    report: dict[str, Any],
    comparison: dict[str, Any] | None,
    items: Sequence[dict[str, Any]],
) -> int | None:
    """Store a drift report and its comparison in one transaction.

    None when the round already has a report (another worker's): then nothing of
    ours is stored, not even the comparison.
    """

    async def write() -> int:
        async with engine.begin() as conn:
            taken = await conn.scalar(
                select(DriftReport.id).where(DriftReport.round_id == report["round_id"])
            )
            if taken is not None:
                raise _ReportTaken
            comparison_id = await insert_comparison(conn, comparison, items) if comparison else None
            inserted = await conn.execute(
                _insert_or_nothing(conn, DriftReport, ("round_id",))
                .values(**report, comparison_id=comparison_id)
                .returning(DriftReport.id)
            )
            report_id = inserted.scalar_one_or_none()
            if report_id is None:
                raise _ReportTaken
            return int(report_id)

    try:
        return await _retry_deadlock(write)
    except (_ReportTaken, IntegrityError):
        return None


async def claim_drift_hook(engine: AsyncEngine, report_id: int, owner: str, now: datetime) -> bool:
    """Take a report's pending on-drift command; True for exactly one worker."""
    async with engine.begin() as conn:
        result = await conn.execute(
            update(DriftReport)
            .where(
                DriftReport.id == report_id,
                DriftReport.on_drift_state == HookState.PENDING.value,
            )
            .values(
                on_drift_state=HookState.RUNNING.value,
                on_drift_worker=owner,
                on_drift_started_at=now,
            )
        )
        return bool(result.rowcount)


async def finish_drift_hook(
    engine: AsyncEngine,
    report_id: int,
    owner: str,
    *,
    succeeded: bool,
    exit_code: int | None,
    error: str | None,
    now: datetime,
) -> None:
    """Record how the on-drift command this worker claimed ended."""
    async with engine.begin() as conn:
        await conn.execute(
            update(DriftReport)
            .where(
                DriftReport.id == report_id,
                DriftReport.on_drift_state == HookState.RUNNING.value,
                DriftReport.on_drift_worker == owner,
            )
            .values(
                on_drift_state=(HookState.SUCCEEDED if succeeded else HookState.FAILED).value,
                on_drift_finished_at=now,
                on_drift_exit_code=exit_code,
                on_drift_error=error,
            )
        )
