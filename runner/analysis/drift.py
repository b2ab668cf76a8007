"""Drift reports: a finished scheduled round against the previous finished round of its batch.

When every run of a scheduled round has finished, the next scheduler pass compares it
with the latest earlier finished round of the same batch that covers every job (a
submit, schedule, full replay or verify round) using the compare machinery
(``runner.analysis.compare``, with its distribution test at the schedule's ``alpha``), and
stores the comparison and a drift report together. The report's status is the first
of these that applies:

1. ``failures``: a run of the scheduled round did not succeed (a failure hides what
   the job would have returned, so it is reported before anything else);
2. ``baseline``: nothing earlier to compare with;
3. ``distribution_changed``: the distribution test rejects: the outputs come from
   another distribution (a new model behind the same name, a changed parameter);
4. ``fingerprint_changed``: a job that succeeded on both sides returned another
   ``system_fingerprint``, while the test does not reject (or could not be made);
5. ``outputs_changed``: some job's outputs differ and no test could be made (one
   sample per job: exact match is all there is);
6. ``within_noise``: outputs differ, and the test does not reject: the endpoint's own
   noise (best-effort seeds, sampling at temperature > 0);
7. ``stable``: every job succeeded with byte-identical outputs.

The schedule's on-drift command (if any) runs through the shell with the report as
JSON on stdin for ``failures``, ``distribution_changed`` and ``outputs_changed``, and
for ``fingerprint_changed`` only when the outputs moved too, as far as can be told (no
test could be made and some outputs differ): OpenAI rotates fingerprints on an
unchanged model, and the report says so instead of alarming. Exactly one worker
stores a report (unique ``round_id``) and exactly one claims its command (a fenced
UPDATE), so the command never runs twice however many workers race; a worker killed
while the command runs leaves it ``running``. A failing command is logged and
recorded, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.analysis.compare import (
    Result,
    Summary,
    compare_pair,
    load_round,
    samples,
    stored_rows,
    summarize,
)
from runner.analysis.distribution import (
    DEFAULT_ALPHA,
    DistributionTest,
    Verdict,
    distribution_test,
)
from runner.db import queue
from runner.db.models import (
    Batch,
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

log = logging.getLogger("runner.analysis.drift")

UNFINISHED = (RunState.QUEUED.value, RunState.RUNNING.value)
# Rounds that ran every job of their batch (replays narrowed by filters did not).
FULL_SELECTIONS = ("all", "verify")


def classify(summary: Summary | None, failed: int, tested: DistributionTest) -> DriftStatus:
    """The status of a report (see the module doc for the order)."""
    if failed:
        return DriftStatus.FAILURES
    if summary is None or not summary.matched:
        return DriftStatus.BASELINE
    if tested.verdict is Verdict.CHANGED:
        return DriftStatus.DISTRIBUTION_CHANGED
    if summary.by_fingerprint[FingerprintGroup.CHANGED].jobs:
        return DriftStatus.FINGERPRINT_CHANGED
    if summary.overall.exact < summary.matched:
        if tested.verdict is Verdict.NOT_TESTED:
            return DriftStatus.OUTPUTS_CHANGED
        return DriftStatus.WITHIN_NOISE
    return DriftStatus.STABLE


def alarms(status: DriftStatus, summary: Summary | None, tested: DistributionTest) -> bool:
    """Whether the on-drift command runs for this report (see the module doc)."""
    if status in (
        DriftStatus.FAILURES,
        DriftStatus.DISTRIBUTION_CHANGED,
        DriftStatus.OUTPUTS_CHANGED,
    ):
        return True
    if status is DriftStatus.FINGERPRINT_CHANGED:
        moved = summary is not None and summary.overall.exact < summary.matched
        return moved and tested.verdict is Verdict.NOT_TESTED
    return False


EXPLANATIONS: dict[str, str] = {
    DriftStatus.FAILURES: "some runs of the round failed",
    DriftStatus.BASELINE: "the first round: nothing to compare with",
    DriftStatus.DISTRIBUTION_CHANGED: "the outputs come from another distribution than the "
    "previous round's (the distribution test rejects): the model or its settings changed",
    DriftStatus.FINGERPRINT_CHANGED: "system_fingerprint changed; the distribution test does "
    "not reject (or could not be made): providers rotate fingerprints on unchanged models",
    DriftStatus.OUTPUTS_CHANGED: "some outputs differ and no distribution test could be made "
    "(one sample per job: ask for samples to tell a change from noise)",
    DriftStatus.WITHIN_NOISE: "some outputs differ, as this endpoint's own noise makes them "
    "differ: the distribution test does not reject",
    DriftStatus.STABLE: "every output is byte-identical",
}


def explain(status: str) -> str:
    """What a drift status means, in a sentence."""
    return EXPLANATIONS.get(status, status)


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
        command, alpha = None, None
        if rnd.schedule_id is not None:
            command, alpha = (
                await conn.execute(
                    select(Schedule.on_drift, Schedule.alpha).where(Schedule.id == rnd.schedule_id)
                )
            ).one_or_none() or (None, None)
    keys = sorted(before.keys() & after.keys())
    items = [compare_pair(before[k], after[k]) for k in keys]
    summary = (
        summarize(items, only_a=len(before) - len(keys), only_b=len(after) - len(keys))
        if keys
        else None
    )
    tested = distribution_test(samples(items), alpha or DEFAULT_ALPHA)
    failed = sum(not r.ok for r in after.values())
    status = classify(summary, failed, tested)
    hook = command is not None and alarms(status, summary, tested)
    comparison: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    if summary is not None and previous is not None:
        columns, rows = stored_rows(summary, items, tested)
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
        "p_value": tested.p_value if summary is not None else None,
        "alpha": tested.alpha,
        "schema_valid_rate": _valid_rate(list(after.values())),
        "on_drift_command": command if hook else None,
        "on_drift_state": HookState.PENDING.value if hook else None,
    }
    report_id = await queue.insert_drift_report(engine, report, comparison, rows)
    if report_id is None:
        return None
    log.info("drift report %d: round %d of batch %d: %s", report_id, rnd.number, rnd.batch_id,
             status.value)  # fmt: skip
    return MadeReport(report_id, rnd.id, status, hook)


def _valid_rate(results: Sequence[Result]) -> float | None:
    """Share of the succeeded runs with a JSON schema whose outputs follow it."""
    checked = [r.schema_valid for r in results if r.ok and r.schema_valid is not None]
    return sum(checked) / len(checked) if checked else None


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
    p_value: float | None  # the distribution test's (None: none made)
    alpha: float | None
    comparison_id: int | None
    schema_valid_rate: float | None  # of the round's outputs that had a JSON schema
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
                p_value=r.p_value,
                alpha=r.alpha,
                comparison_id=r.comparison_id,
                schema_valid_rate=r.schema_valid_rate,
                on_drift_state=r.on_drift_state,
                on_drift_exit_code=r.on_drift_exit_code,
                on_drift_error=r.on_drift_error,
            )
        )
    return found
