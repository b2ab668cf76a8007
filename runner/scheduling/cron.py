"""Cron expressions, time zones and the missed-tick policy: pure, no I/O.

A schedule ticks at the times its cron expression names in its IANA time zone
(croniter does the calendar, zoneinfo the zone, so "0 3 * * *" in Europe/Paris is
03:00 Paris time across daylight-saving changes). Ticks are handled in UTC
everywhere else.

Which ticks are due at ``now``: every tick after the schedule's cursor (its last
tick that got a round, or when it was created or resumed) and at or before ``now``.
When several are due, ticks were missed (no worker was running); ``CatchUp`` says
which of them run:

* ``latest`` (the default): only the most recent one; older missed ticks are skipped;
* ``all``: every one, oldest first.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# croniter ships no type information (its stubs are a separate package): typed here.
from croniter import CroniterBadDateError, CroniterError, croniter  # type: ignore[import-untyped]

from runner.db.models import CatchUpPolicy as CatchUp
from runner.errors import ScheduleError

ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
EXAMPLE = "'0 3 * * *' (03:00 every day)"
SCHEDULE_KEYS = ("name", "cron", "timezone", "catch_up", "on_drift", "report")
REPORT_PLACEHOLDERS = ("date", "round")  # of a report path (runner.htmlreport.files)


def check_timezone(name: str) -> ZoneInfo:
    """The zone of an IANA name, or a ScheduleError that says what to give instead."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}: give an IANA name such as Europe/Paris, "
            "America/New_York or UTC"
        ) from None


def check_catch_up(value: str) -> CatchUp:
    try:
        return CatchUp(value)
    except ValueError:
        choices = ", ".join(c.value for c in CatchUp)
        raise ScheduleError(f"unknown catch-up policy {value!r}: use one of {choices}") from None


@dataclass(frozen=True)
class Cron:
    """A validated cron expression in a time zone."""

    expression: str
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _iter(self, start: datetime) -> croniter:
        return croniter(self.expression, start.astimezone(self.zone))

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (UTC)."""
        tick: datetime = self._iter(moment).get_next(datetime)
        return tick.astimezone(UTC)

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last tick at or before ``moment`` (UTC)."""
        previous: datetime = self._iter(moment).get_prev(datetime)
        following = self.next_after(previous)
        return following if following <= moment else previous.astimezone(UTC)

    def due(self, after: datetime, now: datetime, catch_up: CatchUp) -> list[datetime]:
        """The ticks in ``(after, now]`` that should run, oldest first (see the module doc)."""
        if now <= after:
            return []
        if catch_up is CatchUp.LATEST:
            latest = self.latest_at_or_before(now)
            return [latest] if latest > after else []
        ticks = []
        tick = self.next_after(after)
        while tick <= now:
            ticks.append(tick)
            tick = self.next_after(tick)
        return ticks

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone)


def parse_cron(expression: str, timezone: str = "UTC") -> Cron:
    """Validate a 5-field cron expression (or an @alias) and a time zone."""
    check_timezone(timezone)
    text = " ".join(expression.split())
    fields = text.split(" ")
    if not text or (len(fields) != 5 and text not in ALIASES):
        raise ScheduleError(
            f"invalid cron expression {expression!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), e.g. {EXAMPLE}, "
            f"or one of {', '.join(ALIASES)}"
        )
    try:
        croniter(text)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(
            f"invalid cron expression {expression!r}: {exc}; e.g. {EXAMPLE}"
        ) from None
    cron = Cron(text, timezone)
    try:
        cron.next_after(datetime(2000, 1, 1, tzinfo=UTC))
    except CroniterBadDateError:
        raise ScheduleError(
            f"invalid cron expression {expression!r}: it never fires (no such date)"
        ) from None
    return cron


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as a job file or ``runner schedule add`` gives it, validated."""

    cron: Cron
    name: str | None = None  # None: the batch's name
    catch_up: CatchUp = CatchUp.LATEST
    on_drift: str | None = None  # shell command run with the drift report on stdin
    samples: int | None = None  # samples per run its rounds ask for (None: each job's own)
    alpha: float | None = None  # the drift reports' significance level (None: 0.05)
    report: str | None = None  # HTML report path rewritten after each drift report


def check_name(name: str) -> str:
    if not name or name != name.strip() or len(name) > 200:
        raise ScheduleError(
            f"invalid schedule name {name!r}: give 1 to 200 characters, "
            "no leading or trailing spaces"
        )
    return name


def check_report_path(template: str) -> str:
    """A ``--report`` path: only ``{date}`` and ``{round}`` may be filled in."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ScheduleError(f"invalid --report path {template!r}: {exc}") from None
    unknown = [f for f in fields if f not in REPORT_PLACEHOLDERS]
    if unknown or not template.strip():
        raise ScheduleError(
            f"invalid --report path {template!r}: it may only use the placeholders "
            "{date} and {round} (write {{ and }} for braces)"
        )
    return template


def parse_schedule_block(value: Any, fail: Callable[[str | None, str], NoReturn]) -> ScheduleSpec:
    """The ``schedule:`` key of a YAML job file: a cron string, or a mapping.

    ``fail(field, problem)`` reports a problem (the job file parser adds file and line).
    """
    if isinstance(value, str):
        value = {"cron": value}
    if not isinstance(value, Mapping):
        fail(None, "must be a cron string or a mapping with cron (and timezone, name, "
                   "catch_up, on_drift, report)")  # fmt: skip
    for key in value:
        if key not in SCHEDULE_KEYS:
            fail(str(key), f"unknown key (allowed: {', '.join(SCHEDULE_KEYS)})")
    for key in SCHEDULE_KEYS:
        if key in value and (not isinstance(value[key], str) or not value[key].strip()):
            fail(key, f"must be a non-empty string, got {value[key]!r}")
    if "cron" not in value:
        fail(None, f"'cron' is required, e.g. cron: {EXAMPLE}")
    field = "cron"
    try:
        field = "timezone"
        check_timezone(value.get("timezone", "UTC"))
        field = "cron"
        cron = parse_cron(value["cron"], value.get("timezone", "UTC"))
        field = "catch_up"
        catch_up = check_catch_up(value.get("catch_up", CatchUp.LATEST.value))
        field = "name"
        name = check_name(value["name"]) if "name" in value else None
        field = "report"
        report = check_report_path(value["report"]) if "report" in value else None
    except ScheduleError as exc:
        fail(field, exc.message)
    return ScheduleSpec(
        cron=cron, name=name, catch_up=catch_up, on_drift=value.get("on_drift"), report=report
    )


def parse_now(text: str) -> datetime:
    """``--now``: an ISO 8601 instant; UTC unless it carries an offset."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ScheduleError(
            f"invalid time {text!r}: give ISO 8601, e.g. 2026-11-23T03:00:00Z"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def shifted_clock(start: datetime, real: Callable[[], datetime]) -> Callable[[], datetime]:
    """A clock that reads ``start`` now and then advances with ``real`` (for ``--now``)."""
    offset: timedelta = start - real()
    return lambda: real() + offset
