"""Drift reports: a finished scheduled round against the previous finished round of its batch.

When every run of a scheduled round has finished, the next scheduler pass compares it
with the latest earlier finished round of the same batch that covers every job (a
submit, schedule, full replay or verify round) using the compare machinery
(``runner.compare``), and stores the comparison and a drift report together. The
report's status is the first of these that applies:

1. ``failures``: a run of the scheduled round did not succeed (a failure hides what
   the job would have returned, so it is reported before anything else);
2. ``fingerprint_changed``: a job that succeeded on both sides returned another
   ``system_fingerprint`` (the backend changed: other outputs are expected);
3. ``outputs_changed``: some job's outputs differ (every choice compared) while no
   fingerprint changed, including a job that failed before and succeeds now;
4. ``stable``: every job succeeded with byte-identical outputs.

``baseline`` marks a scheduled round with nothing earlier to compare with.

For ``failures``, ``fingerprint_changed`` and ``outputs_changed``, the schedule's
on-drift command (if any) runs through the shell with the report as JSON on stdin.
Exactly one worker stores a report (unique ``round_id``) and exactly one claims its
command (a fenced UPDATE), so the command never runs twice however many workers
race; a worker killed while the command runs leaves it ``running``. A failing
command is logged and recorded, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.compare import Result, Summary, compare_pair, load_round, stored_rows, summarize
from runner.db import queue
from runner.db.models import (
    Batch,
    ComparisonItem,
    DriftReport,
    DriftStatus,
    FingerprintGroup,
    HookState,
    Round,
    RoundTrigger,
    Run,
    RunState,
    Schedule,
)

log = logging.getLogger("runner.drift")

UNFINISHED = (RunState.QUEUED.value, RunState.RUNNING.value)
# Rounds that ran every job of their batch (replays narrowed by filters did not).
FULL_SELECTIONS = ("all", "verify")
DRIFT = (DriftStatus.FAILURES, DriftStatus.FINGERPRINT_CHANGED, DriftStatus.OUTPUTS_CHANGED)
HOOK_TIMEOUT_SECONDS = 300.0
HOOK_CHANGED_JOBS = 20  # most changed jobs listed in the JSON an on-drift command reads
ERROR_TAIL = 2000  # characters of a failing command's stderr kept in on_drift_error


def classify(summary: Summary | None, failed: int) -> DriftStatus:
    """The status of a report (see the module doc for the order)."""
    if failed:
        return DriftStatus.FAILURES
    if summary is None or not summary.matched:
        return DriftStatus.BASELINE
    if summary.by_fingerprint[FingerprintGroup.CHANGED].jobs:
        return DriftStatus.FINGERPRINT_CHANGED
    if summary.overall.exact < summary.matched:
        return DriftStatus.OUTPUTS_CHANGED
    return DriftStatus.STABLE


def _prints(results: Sequence[Result]) -> str | None:
    """The distinct fingerprints of the successful runs, comma-separated ("null": none)."""
    found = sorted({r.fingerprint or "null" for r in results if r.ok})
    return ", ".join(found) or None


# ---------------------------------------------------------------- making reports


@dataclass(frozen=True)
class MadeReport:
    """A drift report this worker stored."""

    id: int
    round_id: int
    status: DriftStatus
    hook_pending: bool


def _unfinished(round_id: Any) -> Any:
    return exists().where(Run.round_id == round_id, Run.state.in_(UNFINISHED))


async def finished_unreported(conn: AsyncConnection) -> list[Any]:
    """Scheduled rounds whose runs have all finished and that have no report yet."""
    rows = await conn.execute(
        select(Round.id, Round.batch_id, Round.number, Round.schedule_id)
        .where(
            Round.trigger == RoundTrigger.SCHEDULE.value,
            ~_unfinished(Round.id),
            ~exists().where(DriftReport.round_id == Round.id),
        )
        .order_by(Round.id)
    )
    return list(rows)


async def previous_round(conn: AsyncConnection, batch_id: int, number: int) -> Any:
    """The latest finished round before ``number`` that ran every job, or None."""
    return (
        await conn.execute(
            select(Round.id, Round.number)
            .where(
                Round.batch_id == batch_id,
                Round.number < number,
                or_(Round.selection.is_(None), Round.selection.in_(FULL_SELECTIONS)),
                ~_unfinished(Round.id),
            )
            .order_by(Round.number.desc())
            .limit(1)
        )
    ).one_or_none()


async def make_report(engine: AsyncEngine, rnd: Any, now: datetime) -> MadeReport | None:
    """Measure one finished scheduled round and store its report (None: another worker did)."""
    async with engine.connect() as conn:
        previous = await previous_round(conn, rnd.batch_id, rnd.number)
        after = await load_round(conn, rnd.id)
        before = await load_round(conn, previous.id) if previous is not None else {}
        command = None
        if rnd.schedule_id is not None:
            command = await conn.scalar(
                select(Schedule.on_drift).where(Schedule.id == rnd.schedule_id)
            )
    keys = sorted(before.keys() & after.keys())
    items = [compare_pair(before[k], after[k]) for k in keys]
    summary = (
        summarize(items, only_a=len(before) - len(keys), only_b=len(after) - len(keys))
        if keys
        else None
    )
    failed = sum(not r.ok for r in after.values())
    status = classify(summary, failed)
    hook = command is not None and status in DRIFT
    comparison: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    if summary is not None and previous is not None:
        columns, rows = stored_rows(summary, items)
        comparison = {
            "created_at": now,
            "batch_a_id": rnd.batch_id,
            "round_a_id": previous.id,
            "batch_b_id": rnd.batch_id,
            "round_b_id": rnd.id,
            **columns,
        }
    report = {
        "created_at": now,
        "schedule_id": rnd.schedule_id,
        "batch_id": rnd.batch_id,
        "round_id": rnd.id,
        "previous_round_id": previous.id if previous is not None else None,
        "status": status.value,
        "matched": summary.matched if summary else 0,
        "exact_matches": summary.overall.exact if summary else 0,
        "exact_match_rate": summary.exact_match_rate if summary else None,
        "mean_similarity": summary.overall.mean_similarity if summary else None,
        "failed": failed,
        "fingerprint_changed": (
            summary.by_fingerprint[FingerprintGroup.CHANGED].jobs if summary else 0
        ),
        "fingerprints_before": _prints([i.a for i in items]) if items else None,
        "fingerprints_after": _prints(list(after.values())),
        "on_drift_command": command if hook else None,
        "on_drift_state": HookState.PENDING.value if hook else None,
    }
    report_id = await queue.insert_drift_report(engine, report, comparison, rows)
    if report_id is None:
        return None
    log.info("drift report %d: round %d of batch %d: %s", report_id, rnd.number, rnd.batch_id,
             status.value)  # fmt: skip
    return MadeReport(report_id, rnd.id, status, hook)


async def report_finished(engine: AsyncEngine, now: datetime) -> list[MadeReport]:
    """A drift report for every finished scheduled round that has none yet."""
    async with engine.connect() as conn:
        rounds = await finished_unreported(conn)
    made = []
    for rnd in rounds:
        report = await make_report(engine, rnd, now)
        if report is not None:
            made.append(report)
    return made


# ---------------------------------------------------------------- on-drift commands


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _split(prints: str | None) -> list[str]:
    return [p for p in (prints or "").split(", ") if p]


async def report_payload(conn: AsyncConnection, report_id: int) -> dict[str, Any]:
    """The JSON document an on-drift command reads on stdin."""
    previous = Round.__table__.alias("previous")
    row = (
        await conn.execute(
            select(
                DriftReport,
                Schedule.name.label("schedule_name"),
                Schedule.cron,
                Schedule.timezone,
                Batch.name.label("batch_name"),
                Round.number.label("round_number"),
                Round.scheduled_for,
                previous.c.number.label("previous_number"),
            )
            .join(Batch, Batch.id == DriftReport.batch_id)
            .join(Round, Round.id == DriftReport.round_id)
            .outerjoin(previous, previous.c.id == DriftReport.previous_round_id)
            .outerjoin(Schedule, Schedule.id == DriftReport.schedule_id)
            .where(DriftReport.id == report_id)
        )
    ).one()
    report = row  # Core rows: the report's columns, flattened
    changed = []
    if report.comparison_id is not None:
        changed = [
            {
                "key": item.key,
                "state_before": item.state_a,
                "state_after": item.state_b,
                "similarity": item.similarity,
                "fingerprint": item.fingerprint,
                "run_before": item.run_a_id,
                "run_after": item.run_b_id,
            }
            for item in await conn.execute(
                select(ComparisonItem)
                .where(
                    ComparisonItem.comparison_id == report.comparison_id,
                    ~ComparisonItem.exact_match,
                )
                .order_by(func.coalesce(ComparisonItem.similarity, -1.0), ComparisonItem.key)
                .limit(HOOK_CHANGED_JOBS)
            )
        ]
    return {
        "report_id": report.id,
        "status": report.status,
        "created_at": _iso(report.created_at),
        "schedule": row.schedule_name,
        "cron": row.cron,
        "timezone": row.timezone,
        "batch": {"id": report.batch_id, "name": row.batch_name},
        "round": {
            "id": report.round_id,
            "number": row.round_number,
            "scheduled_for": _iso(row.scheduled_for),
        },
        "previous_round": (
            None
            if report.previous_round_id is None
            else {"id": report.previous_round_id, "number": row.previous_number}
        ),
        "comparison_id": report.comparison_id,
        "matched": report.matched,
        "exact_matches": report.exact_matches,
        "exact_match_rate": report.exact_match_rate,
        "mean_similarity": report.mean_similarity,
        "failed": report.failed,
        "fingerprint_changed": report.fingerprint_changed,
        "fingerprints_before": _split(report.fingerprints_before),
        "fingerprints_after": _split(report.fingerprints_after),
        "changed_jobs": changed,
    }


@dataclass(frozen=True)
class HookRun:
    """An on-drift command this worker ran."""

    report_id: int
    command: str
    succeeded: bool
    exit_code: int | None
    error: str | None


async def _execute(command: str, stdin: bytes) -> tuple[int | None, str | None]:
    """Run ``command`` through the shell; (exit code, error or None)."""
    try:
        with anyio.fail_after(HOOK_TIMEOUT_SECONDS):
            done = await anyio.run_process(command, input=stdin, check=False)
    except TimeoutError:
        return None, f"timed out after {HOOK_TIMEOUT_SECONDS:g} s (killed)"
    except OSError as exc:
        return None, f"could not start: {exc}"
    if done.returncode == 0:
        return 0, None
    tail = done.stderr.decode("utf-8", "replace").strip()[-ERROR_TAIL:]
    return done.returncode, f"exit {done.returncode}" + (f": {tail}" if tail else "")


async def run_hook(
    engine: AsyncEngine, report_id: int, owner: str, clock: Callable[[], datetime]
) -> HookRun | None:
    """Claim and run one report's on-drift command (None: not pending any more)."""
    if not await queue.claim_drift_hook(engine, report_id, owner, clock()):
        return None
    async with engine.connect() as conn:
        command = await conn.scalar(
            select(DriftReport.on_drift_command).where(DriftReport.id == report_id)
        )
        payload = await report_payload(conn, report_id)
    stdin = (json.dumps(payload, indent=2) + "\n").encode("utf-8")
    try:
        code, error = await _execute(str(command), stdin)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await queue.finish_drift_hook(
                engine, report_id, owner, succeeded=False, exit_code=None,
                error="the worker stopped while the command ran", now=clock(),
            )  # fmt: skip
        raise
    with anyio.CancelScope(shield=True):
        await queue.finish_drift_hook(
            engine, report_id, owner, succeeded=error is None, exit_code=code, error=error,
            now=clock(),
        )  # fmt: skip
    if error is not None:
        log.warning("on-drift command of drift report %d (%s) failed: %s", report_id,
                    command, error)  # fmt: skip
    return HookRun(report_id, str(command), error is None, code, error)


async def run_pending_hooks(
    engine: AsyncEngine, owner: str, clock: Callable[[], datetime]
) -> list[HookRun]:
    """Run every pending on-drift command this worker manages to claim, oldest first."""
    async with engine.connect() as conn:
        pending = list(
            (
                await conn.execute(
                    select(DriftReport.id)
                    .where(DriftReport.on_drift_state == HookState.PENDING.value)
                    .order_by(DriftReport.id)
                )
            ).scalars()
        )
    ran = []
    for report_id in pending:
        done = await run_hook(engine, report_id, owner, clock)
        if done is not None:
            ran.append(done)
    return ran


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class DriftRow:
    """One drift report as ``runner drift`` lists it."""

    id: int
    created_at: datetime
    schedule: str | None  # None once the schedule was removed
    timezone: str | None
    batch_id: int
    batch_name: str
    round_number: int
    scheduled_for: datetime | None
    previous_number: int | None
    status: str
    matched: int
    exact_matches: int
    exact_match_rate: float | None
    mean_similarity: float | None
    failed: int
    fingerprints_before: str | None
    fingerprints_after: str | None
    comparison_id: int | None
    on_drift_state: str | None
    on_drift_exit_code: int | None
    on_drift_error: str | None


async def history(engine: AsyncEngine, schedule_id: int | None, limit: int) -> list[DriftRow]:
    """The latest ``limit`` drift reports (of one schedule, or of all), oldest first."""
    previous = Round.__table__.alias("previous")
    query = (
        select(
            DriftReport,
            Schedule.name.label("schedule_name"),
            Schedule.timezone,
            Batch.name.label("batch_name"),
            Round.number.label("round_number"),
            Round.scheduled_for,
            previous.c.number.label("previous_number"),
        )
        .join(Batch, Batch.id == DriftReport.batch_id)
        .join(Round, Round.id == DriftReport.round_id)
        .outerjoin(previous, previous.c.id == DriftReport.previous_round_id)
        .outerjoin(Schedule, Schedule.id == DriftReport.schedule_id)
        .order_by(DriftReport.id.desc())
        .limit(limit)
    )
    if schedule_id is not None:
        query = query.where(DriftReport.schedule_id == schedule_id)
    async with engine.connect() as conn:
        rows = list(await conn.execute(query))
    found = []
    for row in reversed(rows):
        r = row
        found.append(
            DriftRow(
                id=r.id,
                created_at=r.created_at,
                schedule=row.schedule_name,
                timezone=row.timezone,
                batch_id=r.batch_id,
                batch_name=row.batch_name,
                round_number=row.round_number,
                scheduled_for=row.scheduled_for,
                previous_number=row.previous_number,
                status=r.status,
                matched=r.matched,
                exact_matches=r.exact_matches,
                exact_match_rate=r.exact_match_rate,
                mean_similarity=r.mean_similarity,
                failed=r.failed,
                fingerprints_before=r.fingerprints_before,
                fingerprints_after=r.fingerprints_after,
                comparison_id=r.comparison_id,
                on_drift_state=r.on_drift_state,
                on_drift_exit_code=r.on_drift_exit_code,
                on_drift_error=r.on_drift_error,
            )
        )
    return found
