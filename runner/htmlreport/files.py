"""Building a report and writing it: atomically, to a path with placeholders.

A report is written to a temporary file beside its target and renamed over it (as
``runner export`` writes), so a reader (a browser, a CI artifact upload, a web server)
never sees half a page. A schedule's ``--report`` path may hold ``{date}`` (the tick's
date, in the schedule's time zone) and ``{round}`` (the round's number); nothing else is
filled in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import Price
from runner.db.models import Round, Schedule
from runner.errors import RunnerError
from runner.export import check_writable, write_atomically
from runner.htmlreport.data import RoundRange, gather
from runner.htmlreport.page import render

log = logging.getLogger("runner.htmlreport")


async def build(
    engine: AsyncEngine,
    batch_ref: str,
    *,
    rounds: RoundRange | None = None,
    prices: Mapping[str, Price] | None = None,
    now: datetime | None = None,
) -> str:
    """The HTML report of batch ``batch_ref`` (id or name)."""
    async with engine.connect() as conn:
        document = await gather(conn, batch_ref, rounds=rounds, prices=prices, now=now)
    return render(document)


def write_report(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (``export``'s temporary file and rename)."""
    write_atomically(path, lambda out: out.write(text))


def expand(template: str, *, date: str, number: int) -> Path:
    return Path(template.format(date=date, round=number))


async def write_schedule_reports(
    engine: AsyncEngine, round_ids: Sequence[int], prices: Mapping[str, Price], now: datetime
) -> list[Path]:
    """Rewrite the ``--report`` of the schedules whose rounds just got a drift report.

    A report that cannot be written is logged, never fatal (like an on-drift command).
    """
    async with engine.connect() as conn:
        rows = list(
            await conn.execute(
                select(Round.batch_id, Round.number, Round.scheduled_for)
                .add_columns(Schedule.report, Schedule.timezone, Schedule.name)
                .join(Schedule, Schedule.id == Round.schedule_id)
                .where(Round.id.in_(list(round_ids)), Schedule.report.is_not(None))
                .order_by(Round.number)
            )
        )
    written = []
    for row in rows:
        tick = (row.scheduled_for or now).astimezone(ZoneInfo(row.timezone))
        path = expand(row.report, date=tick.date().isoformat(), number=row.number)
        try:
            check_writable(path)
            write_report(path, await build(engine, str(row.batch_id), prices=prices, now=now))
        except (OSError, RunnerError) as exc:
            reason = exc.message if isinstance(exc, RunnerError) else str(exc)
            log.error("schedule %s: could not write its report %s: %s", row.name, path, reason)
            continue
        log.info("schedule %s: report of round %d written to %s", row.name, row.number, path)
        written.append(path)
    return written
