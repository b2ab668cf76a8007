"""On-drift commands: a drift report that calls for it runs its schedule's command once.

The command runs through the shell with the report as JSON on stdin (``report_payload``:
status and what it means, rounds, exact match, fingerprints, the most changed jobs and
the distribution test). One worker claims it (a fenced UPDATE), so it never runs twice
however many workers see the report; a worker killed while it runs leaves it
``running``. A failing command (non-zero exit, timeout) is logged and recorded in
``drift_reports.on_drift_*``, never fatal. Which reports call for it: see
``runner.analysis.drift``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.analysis.drift import explain
from runner.db import queue
from runner.db.models import (
    Batch,
    Comparison,
    ComparisonItem,
    DriftReport,
    HookState,
    Round,
    Schedule,
)

log = logging.getLogger("runner.drift")

HOOK_TIMEOUT_SECONDS = 300.0
HOOK_CHANGED_JOBS = 20  # most changed jobs listed in the JSON an on-drift command reads
ERROR_TAIL = 2000  # characters of a failing command's stderr kept in on_drift_error


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
    test = None
    if report.comparison_id is not None:
        test = (
            await conn.execute(select(Comparison).where(Comparison.id == report.comparison_id))
        ).one_or_none()
    moved = []
    if test is not None and test.test_p_value is not None:
        moved = [
            {"key": key, "contribution": share, "p_value": p}
            for key, share, p in await conn.execute(
                select(
                    ComparisonItem.key,
                    ComparisonItem.test_contribution,
                    ComparisonItem.test_p_value,
                )
                .where(
                    ComparisonItem.comparison_id == report.comparison_id,
                    ComparisonItem.test_contribution.is_not(None),
                )
                .order_by(ComparisonItem.test_contribution.desc(), ComparisonItem.key)
                .limit(HOOK_CHANGED_JOBS)
            )
        ]
    return {
        "report_id": report.id,
        "status": report.status,
        "explanation": explain(report.status),
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
        "p_value": report.p_value,
        "alpha": report.alpha,
        "changed_jobs": changed,
        "distribution_test": None
        if test is None or test.distribution is None
        else {
            "verdict": test.distribution,
            "alpha": test.alpha,
            "p_value": test.test_p_value,
            "statistic": test.test_statistic,
            "kernel": test.test_kernel,
            "jobs": test.test_jobs,
            "samples_a": test.test_samples_a,
            "samples_b": test.test_samples_b,
            "permutations": test.test_permutations,
            "seed": test.test_seed,
            "note": test.test_note,
            "moved_most": moved,
        },
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
        process = await anyio.open_process(command, stdout=subprocess.DEVNULL)
    except OSError as exc:
        return None, f"could not start: {exc}"
    async with process:
        try:
            with anyio.fail_after(HOOK_TIMEOUT_SECONDS):
                errors = bytearray()

                async def read_errors() -> None:
                    assert process.stderr is not None
                    async for chunk in process.stderr:
                        errors.extend(chunk)

                async with anyio.create_task_group() as group:
                    group.start_soon(read_errors)
                    assert process.stdin is not None
                    # A command may not read the report (``echo ran >> log``).
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await process.stdin.send(stdin)
                    await process.stdin.aclose()
                returncode = await process.wait()
        except TimeoutError:
            process.kill()
            return None, f"timed out after {HOOK_TIMEOUT_SECONDS:g} s (killed)"
    if returncode == 0:
        return 0, None
    tail = errors.decode("utf-8", "replace").strip()[-ERROR_TAIL:]
    return returncode, f"exit {returncode}" + (f": {tail}" if tail else "")


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
