"""Schedules: a batch regenerated at cron ticks, each tick exactly once, with no leader.

A schedule (``runner schedule add``, or ``schedule:`` in a job file) names a batch, a
cron expression and a time zone. Every ``runner work`` process runs
``scheduler_loop`` beside its claim loop; ``runner schedule run-due`` runs one pass
for users of system cron or CI timers. A pass:

1. creates a round (trigger ``schedule``) with one queued run per job for each due
   tick (``runner.scheduling.cron`` says which: by default only the most recent missed one).
   All workers try; the unique index on ``rounds (schedule_id, scheduled_for)``
   lets exactly one succeed (``queue.create_tick_round``). Scheduled rounds always
   send their requests: stored results are never reused;
2. stores a drift report for every scheduled round that has finished
   (``runner.analysis.drift``), and rewrites the HTML report of each schedule that has
   a ``--report`` path (``runner.htmlreport``; a failure to write is logged, not fatal);
3. runs the pending on-drift commands it manages to claim.

Pausing stops the ticks; resuming skips those that fell during the pause. Removing a
schedule keeps its rounds and drift reports (their ``schedule_id`` becomes NULL).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.analysis import drift
from runner.config import Settings
from runner.db import queue
from runner.db.models import Batch, DriftReport, Round, Schedule
from runner.db.models import CatchUpPolicy as CatchUp
from runner.db.outage import Outage
from runner.db.types import utcnow
from runner.errors import NotFoundError, ScheduleError
from runner.htmlreport.files import write_schedule_reports
from runner.params import MAX_SAMPLES
from runner.report import resolve_batch
from runner.scheduling.cron import (
    ScheduleSpec,
    check_catch_up,
    check_name,
    check_report_path,
    parse_cron,
)
from runner.scheduling.hooks import HookRun, run_pending_hooks

log = logging.getLogger("runner.scheduling.schedule")
T = TypeVar("T")


def owner_id(kind: str = "run-due") -> str:
    """Who claims on-drift commands outside a worker (``runner schedule run-due``)."""
    return f"{socket.gethostname()}:{kind}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------- managing schedules


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as ``runner schedule list`` shows it."""

    id: int
    name: str
    batch_id: int
    batch_name: str
    cron: str
    timezone: str
    catch_up: str
    on_drift: str | None
    samples: int | None  # samples per run its rounds ask for (None: each job's own)
    alpha: float | None  # its drift reports' significance level (None: 0.05)
    report: str | None  # the HTML report path rewritten after each drift report
    created_at: datetime
    paused_at: datetime | None
    last_tick: datetime | None  # the latest tick that got a round
    last_round: int | None  # that round's number
    last_status: str | None  # the latest drift report's status
    next_tick: datetime | None  # None while paused


def _already(name: str) -> ScheduleError:
    return ScheduleError(
        f"a schedule named {name!r} already exists: choose another name, "
        f"or remove it first with `runner schedule remove {name}`"
    )


async def create_schedule(
    conn: AsyncConnection, spec: ScheduleSpec, batch_id: int, batch_name: str, now: datetime
) -> str:
    """Inside the caller's transaction (a submit's, or ``add_schedule``'s); returns its name."""
    name = check_name(spec.name or batch_name)
    if await conn.scalar(select(Schedule.id).where(Schedule.name == name)) is not None:
        raise _already(name)
    await queue.insert_schedule(
        conn,
        name=name,
        batch_id=batch_id,
        cron=spec.cron.expression,
        timezone=spec.cron.timezone,
        catch_up=spec.catch_up.value,
        on_drift=spec.on_drift,
        samples=spec.samples,
        alpha=spec.alpha,
        report=spec.report,
        now=now,
    )
    return name


async def add_schedule(
    engine: AsyncEngine,
    name: str,
    batch_ref: str,
    *,
    cron: str,
    timezone: str = "UTC",
    catch_up: str = CatchUp.LATEST.value,
    on_drift: str | None = None,
    samples: int | None = None,
    alpha: float | None = None,
    report: str | None = None,
    now: datetime | None = None,
) -> ScheduleInfo:
    """Validate everything, then store the schedule; nothing is written on an error."""
    if samples is not None and not 1 <= samples <= MAX_SAMPLES:
        raise ScheduleError(f"--samples must be from 1 to {MAX_SAMPLES}, got {samples}")
    if alpha is not None and not 0 < alpha < 1:
        raise ScheduleError(f"--alpha must be between 0 and 1 (e.g. 0.05), got {alpha:g}")
    spec = ScheduleSpec(
        cron=parse_cron(cron, timezone),
        name=check_name(name),
        catch_up=check_catch_up(catch_up),
        on_drift=on_drift if on_drift and on_drift.strip() else None,
        samples=samples,
        alpha=alpha,
        report=check_report_path(report) if report is not None else None,
    )
    now = now or utcnow()
    try:
        async with engine.begin() as conn:
            batch = await resolve_batch(conn, batch_ref)
            await create_schedule(conn, spec, batch.id, batch.name, now)
    except IntegrityError:
        raise _already(name) from None  # another process added the same name just now
    (info,) = await list_schedules(engine, now, name=name)
    return info


async def list_schedules(
    engine: AsyncEngine, now: datetime, *, name: str | None = None
) -> list[ScheduleInfo]:
    """Every schedule (or the one named), by name."""
    last_tick = (
        select(func.max(Round.scheduled_for))
        .where(Round.schedule_id == Schedule.id)
        .scalar_subquery()
    )
    query = (
        select(Schedule, Batch.name.label("batch_name"), last_tick.label("last_tick"))
        .join(Batch, Batch.id == Schedule.batch_id)
        .order_by(Schedule.name)
    )
    if name is not None:
        query = query.where(Schedule.name == name)
    async with engine.connect() as conn:
        rows = list(await conn.execute(query))
        if name is not None and not rows:
            names = (await conn.execute(select(Schedule.name).order_by(Schedule.name))).scalars()
            raise NotFoundError(
                f"no schedule {name!r} (schedules: {', '.join(names) or 'none'}); "
                "see `runner schedule list`"
            )
        found = []
        for row in rows:
            s = row  # Core rows: the schedule's columns, flattened
            last_round = await conn.scalar(
                select(Round.number).where(
                    Round.schedule_id == s.id, Round.scheduled_for == row.last_tick
                )
            )
            last_status = await conn.scalar(
                select(DriftReport.status)
                .where(DriftReport.schedule_id == s.id)
                .order_by(DriftReport.id.desc())
                .limit(1)
            )
            found.append(
                ScheduleInfo(
                    id=s.id,
                    name=s.name,
                    batch_id=s.batch_id,
                    batch_name=row.batch_name,
                    cron=s.cron,
                    timezone=s.timezone,
                    catch_up=s.catch_up,
                    on_drift=s.on_drift,
                    samples=s.samples,
                    alpha=s.alpha,
                    report=s.report,
                    created_at=s.created_at,
                    paused_at=s.paused_at,
                    last_tick=row.last_tick,
                    last_round=last_round,
                    last_status=last_status,
                    next_tick=None
                    if s.paused_at is not None
                    else _next_tick(s, row.last_tick, now),
                )
            )
    return found


def _next_tick(s: Any, last_tick: datetime | None, now: datetime) -> datetime | None:
    """The next tick that will run: a due one if any, else the first after ``now``."""
    try:
        cron = parse_cron(s.cron, s.timezone)
    except ScheduleError:
        return None
    cursor = max(s.since, last_tick) if last_tick else s.since
    due = cron.due(cursor, now, CatchUp(s.catch_up))
    return due[0] if due else cron.next_after(max(cursor, now))


async def _named(engine: AsyncEngine, name: str, now: datetime) -> ScheduleInfo:
    (info,) = await list_schedules(engine, now, name=name)
    return info


async def pause(engine: AsyncEngine, name: str, now: datetime | None = None) -> bool:
    """Stop a schedule's ticks; False if it was paused already."""
    now = now or utcnow()
    info = await _named(engine, name, now)
    return await queue.pause_schedule(engine, info.id, now)


async def resume(engine: AsyncEngine, name: str, now: datetime | None = None) -> bool:
    """Start a schedule's ticks again from ``now``; False if it was not paused."""
    now = now or utcnow()
    info = await _named(engine, name, now)
    return await queue.resume_schedule(engine, info.id, now)


async def remove(engine: AsyncEngine, name: str) -> ScheduleInfo:
    """Delete a schedule; its rounds and drift reports stay."""
    info = await _named(engine, name, utcnow())
    await queue.delete_schedule(engine, info.id)
    return info


async def schedule_id(engine: AsyncEngine, name: str) -> int:
    """The id of the schedule named ``name`` (NotFoundError lists the names)."""
    return (await _named(engine, name, utcnow())).id


# ---------------------------------------------------------------- ticking


@dataclass(frozen=True)
class Due:
    """The ticks of one schedule that should get a round now."""

    schedule_id: int
    name: str
    timezone: str
    catch_up: CatchUp
    ticks: list[datetime]


async def due(engine: AsyncEngine, now: datetime) -> list[Due]:
    """The due ticks of every active schedule at ``now`` (see ``runner.scheduling.cron``)."""
    last_tick = (
        select(func.max(Round.scheduled_for))
        .where(Round.schedule_id == Schedule.id)
        .scalar_subquery()
    )
    async with engine.connect() as conn:
        rows = list(
            await conn.execute(
                select(Schedule, last_tick.label("last_tick"))
                .where(Schedule.paused_at.is_(None))
                .order_by(Schedule.id)
            )
        )
    found = []
    for row in rows:
        s = row  # Core rows: the schedule's columns, flattened
        try:
            cron = parse_cron(s.cron, s.timezone)
        except ScheduleError as exc:  # edited by hand in the database: skip it, loudly
            log.error("schedule %s is skipped: %s", s.name, exc.message)
            continue
        cursor = max(s.since, row.last_tick) if row.last_tick else s.since
        policy = CatchUp(s.catch_up)
        ticks = cron.due(cursor, now, policy)
        if ticks:
            found.append(Due(s.id, s.name, s.timezone, policy, ticks))
    return found


@dataclass(frozen=True)
class Ticked:
    """A round this process created for a tick of a schedule."""

    schedule: str
    timezone: str
    round: queue.TickRound


async def tick(engine: AsyncEngine, settings: Settings, now: datetime) -> list[Ticked]:
    """Create the rounds of every due tick (other workers may create some of them)."""
    # Claimable at once, in real time too: a rehearsal (``--now`` ahead of the real time)
    # makes rounds any worker runs now, not ones that wait for the rehearsed time.
    available_at = min(now, utcnow())
    created = []
    for item in await due(engine, now):
        for scheduled_for in item.ticks:
            made = await queue.create_tick_round(
                engine,
                item.schedule_id,
                scheduled_for,
                now=now,
                available_at=available_at,
                max_attempts=settings.worker.max_attempts,
                skip_if_newer=item.catch_up is CatchUp.LATEST,
            )
            if made is not None:
                log.info(
                    "schedule %s: tick %s: batch %d round %d, %d runs queued",
                    item.name,
                    scheduled_for.isoformat(),
                    made.batch_id,
                    made.number,
                    made.runs,
                )
                created.append(Ticked(item.name, item.timezone, made))
    return created


@dataclass(frozen=True)
class PassResult:
    """What one scheduler pass did."""

    rounds: list[Ticked] = field(default_factory=list)
    reports: list[drift.MadeReport] = field(default_factory=list)
    hooks: list[HookRun] = field(default_factory=list)


async def run_pass(
    engine: AsyncEngine,
    settings: Settings,
    clock: Callable[[], datetime],
    owner: str,
    *,
    ticks: bool = True,
    outage: Outage | None = None,
) -> PassResult:
    """Due ticks, then drift reports of finished scheduled rounds, then on-drift commands.

    ``outage``: a worker's, to wait out an unreachable database (every step is safe to
    run again: ticks and reports are unique per round, hooks are claimed).
    """
    rounds, reports = await _tick_and_report(engine, settings, clock, ticks=ticks, outage=outage)
    hooks = await _through(
        outage, "running on-drift commands", lambda: run_pending_hooks(engine, owner, clock)
    )
    return PassResult(rounds, reports, hooks)


async def _through(outage: Outage | None, step: str, fn: Callable[[], Awaitable[T]]) -> T:
    return await fn() if outage is None else await outage.call(step, fn)


async def _tick_and_report(
    engine: AsyncEngine,
    settings: Settings,
    clock: Callable[[], datetime],
    *,
    ticks: bool,
    outage: Outage | None = None,
) -> tuple[list[Ticked], list[drift.MadeReport]]:
    async def step() -> tuple[list[Ticked], list[drift.MadeReport]]:
        # Database work is shielded: a stopping worker lets a pass's transactions finish.
        with anyio.CancelScope(shield=True):
            rounds = await tick(engine, settings, clock()) if ticks else []
            reports = await drift.report_finished(engine, clock())
        return rounds, reports

    rounds, reports = await _through(outage, "schedule ticks and drift reports", step)
    if reports:  # the schedules' --report pages, rewritten by the worker that made them
        made = [r.round_id for r in reports]
        await _through(
            outage,
            "writing HTML reports",
            lambda: write_schedule_reports(engine, made, settings.prices, clock()),
        )
    return rounds, reports


async def scheduler_loop(
    engine: AsyncEngine,
    settings: Settings,
    clock: Callable[[], datetime],
    owner: str,
    stop: anyio.Event,
    outage: Outage | None = None,
    *,
    task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
) -> None:
    """The side task of every ``runner work``: one pass, then another every
    ``worker.schedule_seconds``, on the worker's clock, until ``stop`` is set (a pass
    under way finishes first). An error stops the worker.

    It reports started once the first pass queued the due ticks' rounds (before its
    on-drift commands): a burst worker started at a tick must find them to run.
    """
    await _tick_and_report(engine, settings, clock, ticks=True, outage=outage)
    task_status.started()
    while True:
        await _through(
            outage,
            "running on-drift commands",
            lambda: run_pending_hooks(engine, owner, clock),
        )
        with anyio.move_on_after(settings.worker.schedule_seconds):
            await stop.wait()
        if stop.is_set():
            return
        await _tick_and_report(engine, settings, clock, ticks=True, outage=outage)
