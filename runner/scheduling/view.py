"""Text and JSON for ``runner schedule ...`` and ``runner drift``.

Every function returns text; the CLI prints it. Times are shown in the schedule's
time zone (with its abbreviation) and, where it matters, in UTC.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from rich import box
from rich.table import Table
from rich.text import Text

from runner.analysis.drift import DriftRow
from runner.richtext import render
from runner.scheduling.schedule import PassResult, ScheduleInfo
from runner.tabular import plain


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def local_time(moment: datetime | None, timezone: str | None) -> str:
    """``2026-11-23 03:00 CET``; ``-`` for none."""
    if moment is None:
        return "-"
    return f"{moment.astimezone(_zone(timezone)):%Y-%m-%d %H:%M %Z}"


def _both(moment: datetime | None, timezone: str) -> str:
    shown = local_time(moment, timezone)
    if moment is None or timezone == "UTC":
        return shown
    return f"{shown} ({moment.astimezone(UTC):%H:%M} UTC)"


def _table(*columns: str) -> Table:
    return Table(*columns, box=box.SIMPLE_HEAD, pad_edge=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


# ---------------------------------------------------------------- schedules


def schedule_line(info: ScheduleInfo) -> str:
    """One schedule in a sentence (``add``, ``pause``, ``resume``, ``remove``)."""
    state = (
        f"paused since {local_time(info.paused_at, info.timezone)}"
        if info.paused_at is not None
        else f"next tick {_both(info.next_tick, info.timezone)}"
    )
    hook = f", on drift: {info.on_drift}" if info.on_drift else ""
    samples = f", {info.samples} samples per job" if info.samples else ""
    report = f", report: {info.report}" if info.report else ""
    return (
        f"schedule {info.name}: batch {info.batch_id} ({info.batch_name}), "
        f"'{info.cron}' in {info.timezone}, catch-up {info.catch_up}{samples}{hook}{report}; "
        f"{state}"
    )


def schedules_text(infos: Sequence[ScheduleInfo], width: int = 120) -> str:
    if not infos:
        return (
            "no schedules yet: `runner schedule add NAME BATCH --cron '0 3 * * *'`, "
            "or schedule: in a job file"
        )
    table = _table(
        "name", "batch", "cron", "timezone", "catch-up", "next tick", "last tick", "drift", "state"
    )
    for i in infos:
        last = (
            f"{local_time(i.last_tick, i.timezone)} (round {i.last_round})" if i.last_tick else "-"
        )
        table.add_row(
            Text(i.name),
            Text(f"{i.batch_id} ({i.batch_name})"),
            Text(i.cron),
            i.timezone,
            i.catch_up,
            local_time(i.next_tick, i.timezone),
            last,
            i.last_status or "-",
            "paused" if i.paused_at is not None else "active",
        )
    hooks = [f"on drift, {i.name} runs: {i.on_drift}" for i in infos if i.on_drift]
    return "\n".join([render([table], color=False, width=width), *hooks])


def schedules_json(infos: Sequence[ScheduleInfo]) -> str:
    return json.dumps([{k: plain(v) for k, v in asdict(i).items()} for i in infos], indent=2)


def pass_text(result: PassResult) -> str:
    """What ``runner schedule run-due`` did."""
    lines = [
        f"schedule {t.schedule}: tick {_both(t.round.scheduled_for, t.timezone)}: "
        f"batch {t.round.batch_id} round {t.round.number}, {t.round.runs} runs queued"
        for t in result.rounds
    ]
    lines += [
        f"drift report {r.id}: {r.status.value}"
        + (" (on-drift command pending)" if r.hook_pending else "")
        for r in result.reports
    ]
    lines += [
        f"on-drift command of drift report {h.report_id}: "
        + ("exit 0" if h.succeeded else f"failed: {h.error}")
        for h in result.hooks
    ]
    return "\n".join(lines) or "nothing due"


# ---------------------------------------------------------------- drift history


def _exact(row: DriftRow) -> str:
    if row.exact_match_rate is None:
        return "-"
    return f"{row.exact_matches}/{row.matched} ({_pct(row.exact_match_rate)})"


def _hook(row: DriftRow) -> str:
    if row.on_drift_state is None:
        return "-"
    if row.on_drift_exit_code is not None and row.on_drift_state == "failed":
        return f"failed (exit {row.on_drift_exit_code})"
    return row.on_drift_state


def _fingerprints(row: DriftRow) -> str:
    before, after = row.fingerprints_before or "-", row.fingerprints_after or "-"
    return f"{after} (same)" if before == after else f"{before} -> {after}"


def drift_text(rows: Sequence[DriftRow], width: int = 120) -> str:
    if not rows:
        return (
            "no drift reports yet: one is made when a scheduled round finishes "
            "(see `runner schedule list`)"
        )
    schemas = any(r.schema_valid_rate is not None for r in rows)
    table = _table(
        "report",
        "tick",
        "schedule",
        "rounds",
        "status",
        "p",
        "exact match",
        *(["schema valid"] if schemas else []),
        "fingerprints",
        "on-drift",
    )
    for r in rows:
        rounds = (
            f"{r.previous_number}->{r.round_number}" if r.previous_number else f"{r.round_number}"
        )
        table.add_row(
            str(r.id),
            local_time(r.scheduled_for or r.created_at, r.timezone),
            Text(r.schedule or f"(removed) batch {r.batch_id}"),
            rounds,
            r.status,
            "-" if r.p_value is None else f"{r.p_value:.3g}",
            _exact(r),
            *([_pct(r.schema_valid_rate)] if schemas else []),
            Text(_fingerprints(r)),
            _hook(r),
        )
    return render([table], color=False, width=width)


def drift_json(rows: Sequence[DriftRow]) -> str:
    return json.dumps([{k: plain(v) for k, v in asdict(r).items()} for r in rows], indent=2)
