"""Schedules on both backends: ticks exactly once, the missed-tick policy, pause and resume.

Time never passes for real here: ``now`` is given, or the workers run on a ``Clock``
the test jumps to a tick.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.db import engine as db
from runner.errors import JobFileError
from runner.scheduling import schedule
from runner.submit import submit
from tests.helpers import rows, scalar, submit_jobs
from tests.replaykit import work
from tests.schedulekit import Clock, nightly_job, run_workers, schedule_settings

pytestmark = pytest.mark.anyio


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


CREATED = utc(2026, 11, 20, 12)  # a schedule made at noon; its first tick is 03:00 next day


async def scheduled_rounds(engine: AsyncEngine) -> list[tuple[int, str, datetime]]:
    found = await rows(
        engine,
        "SELECT number, trigger, scheduled_for FROM rounds WHERE schedule_id IS NOT NULL "
        "ORDER BY number",
    )
    return [(r[0], r[1], _aware(r[2])) for r in found]


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite text
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def test_missed_ticks_run_only_the_latest_by_default(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    await submit_jobs(engine, tmp_path, 3, settings, name="b")
    await schedule.add_schedule(engine, "nightly", "b", cron="0 3 * * *", now=CREATED)
    # No worker ran for three nights (21st, 22nd, 23rd): only the 23rd runs.
    made = await schedule.tick(engine, settings, utc(2026, 11, 23, 12))
    assert [(t.schedule, t.round.scheduled_for, t.round.runs) for t in made] == [
        ("nightly", utc(2026, 11, 23, 3), 3)
    ]
    assert await scheduled_rounds(engine) == [(2, "schedule", utc(2026, 11, 23, 3))]
    # Nothing more is due until the next night; then exactly that night.
    assert await schedule.tick(engine, settings, utc(2026, 11, 24, 2, 59)) == []
    assert len(await schedule.tick(engine, settings, utc(2026, 11, 24, 3))) == 1
    assert [r[2] for r in await scheduled_rounds(engine)] == [
        utc(2026, 11, 23, 3),
        utc(2026, 11, 24, 3),
    ]
    # The new round's runs send their requests: queued, nothing reused, no attempt yet.
    runs = await rows(
        engine,
        "SELECT r.state, r.attempts, r.reused_from_run_id, ro.reuse FROM runs r "
        "JOIN rounds ro ON ro.id = r.round_id WHERE ro.trigger = 'schedule'",
    )
    assert {tuple(r) for r in runs} == {("queued", 0, None, False)}


async def test_catch_up_all_runs_every_missed_tick_oldest_first(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    await submit_jobs(engine, tmp_path, 2, settings, name="b")
    await schedule.add_schedule(
        engine, "nightly", "b", cron="0 3 * * *", catch_up="all", now=CREATED
    )
    made = await schedule.tick(engine, settings, utc(2026, 11, 23, 12))
    assert [t.round.number for t in made] == [2, 3, 4]
    assert [r[2] for r in await scheduled_rounds(engine)] == [
        utc(2026, 11, 21, 3),
        utc(2026, 11, 22, 3),
        utc(2026, 11, 23, 3),
    ]
    assert await schedule.tick(engine, settings, utc(2026, 11, 23, 12)) == []


async def test_pause_stops_ticks_and_resume_skips_those_of_the_pause(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    await submit_jobs(engine, tmp_path, 1, settings, name="b")
    await schedule.add_schedule(
        engine, "nightly", "b", cron="0 3 * * *", catch_up="all", now=CREATED
    )
    assert await schedule.pause(engine, "nightly", utc(2026, 11, 20, 13))
    assert not await schedule.pause(engine, "nightly", utc(2026, 11, 20, 14))
    assert await schedule.tick(engine, settings, utc(2026, 11, 23, 12)) == []
    assert await schedule.resume(engine, "nightly", utc(2026, 11, 23, 12))
    assert not await schedule.resume(engine, "nightly", utc(2026, 11, 23, 12))
    # The nights of the pause never run, even with catch-up all; the next one does.
    assert await schedule.tick(engine, settings, utc(2026, 11, 23, 13)) == []
    made = await schedule.tick(engine, settings, utc(2026, 11, 24, 3, 0, 1))
    assert [t.round.scheduled_for for t in made] == [utc(2026, 11, 24, 3)]


async def test_racing_workers_of_separate_engines_create_one_round_per_tick(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    await submit_jobs(engine, tmp_path, 20, settings, name="b")
    await schedule.add_schedule(engine, "nightly", "b", cron="0 3 * * *", now=CREATED)
    await schedule.add_schedule(
        engine, "every-night", "b", cron="0 3 * * *", catch_up="all", now=CREATED
    )
    engines = [db.create_engine_async(db_url) for _ in range(6)]
    made: list[schedule.Ticked] = []

    async def race(other: AsyncEngine) -> None:
        made.extend(await schedule.tick(other, settings, utc(2026, 11, 23, 12)))

    try:
        async with anyio.create_task_group() as group:
            for other in engines:
                group.start_soon(race, other)
    finally:
        for other in engines:
            await other.dispose()
    # nightly: its latest tick; every-night: three ticks. Each exactly once, numbered apart.
    assert sorted((t.schedule, t.round.scheduled_for) for t in made) == [
        ("every-night", utc(2026, 11, 21, 3)),
        ("every-night", utc(2026, 11, 22, 3)),
        ("every-night", utc(2026, 11, 23, 3)),
        ("nightly", utc(2026, 11, 23, 3)),
    ]
    assert await scalar(engine, "SELECT count(*) FROM rounds WHERE trigger = 'schedule'") == 4
    assert await scalar(engine, "SELECT count(*) FROM runs") == 20 * 5
    numbers = [r[0] for r in await rows(engine, "SELECT number FROM rounds ORDER BY number")]
    assert numbers == [1, 2, 3, 4, 5]


async def test_a_job_file_schedule_is_created_with_its_batch_or_not_at_all(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    path = nightly_job(tmp_path, 2, timezone="Europe/Paris", on_drift="cat > drift.json")
    sub = await submit(engine, path, settings, now=CREATED)
    assert sub.schedule == "nightly"
    (info,) = await schedule.list_schedules(engine, CREATED)
    assert (info.batch_id, info.cron, info.timezone, info.on_drift) == (
        sub.batch_id,
        "0 3 * * *",
        "Europe/Paris",
        "cat > drift.json",
    )
    assert info.next_tick == utc(2026, 11, 21, 2)  # 03:00 in Paris, in winter
    # The same file again as a new batch: the schedule name is taken, so no second batch.
    with pytest.raises(JobFileError, match="schedule: a schedule named 'nightly' already"):
        await submit(engine, path, settings, again=True)
    assert await scalar(engine, "SELECT count(*) FROM batches") == 1
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 2
    assert await scalar(engine, "SELECT count(*) FROM schedules") == 1


async def test_the_worker_loop_ticks_on_its_clock_and_reports_a_stable_night(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    hook = tmp_path / "drift.json"
    sub = await submit(
        engine, nightly_job(tmp_path, 4, on_drift=f"cat > {hook}"), settings, now=CREATED
    )
    await work(engine, settings, [sub.round_id])
    # "Come back tomorrow": the workers' clock reads the tick (real time is elsewhere).
    clock = Clock(utc(2026, 11, 21, 3))

    async def reported() -> bool:
        return bool(await scalar(engine, "SELECT count(*) FROM drift_reports"))

    await run_workers(engine, settings, clock, reported)
    assert await scheduled_rounds(engine) == [(2, "schedule", utc(2026, 11, 21, 3))]
    (report,) = await rows(
        engine,
        "SELECT status, matched, exact_matches, exact_match_rate, failed, "
        "fingerprints_before, fingerprints_after, on_drift_state, on_drift_command, "
        "previous_round_id, comparison_id FROM drift_reports",
    )
    assert report[:5] == ("stable", 4, 4, 1.0, 0)
    assert report[5] == report[6] and report[5].startswith("fp_")
    assert report[7:9] == (None, None)  # stable: the on-drift command does not run
    assert not hook.exists()
    assert report[9] == sub.round_id
    stored = await rows(
        engine, "SELECT round_a_id, exact_matches FROM comparisons WHERE id = :id", id=report[10]
    )
    assert [tuple(r) for r in stored] == [(sub.round_id, 4)]
    # The scheduled round sent every request itself, once.
    attempts = await rows(
        engine,
        "SELECT r.attempts, r.reused_from_run_id FROM runs r JOIN rounds ro "
        "ON ro.id = r.round_id WHERE ro.trigger = 'schedule'",
    )
    assert [tuple(a) for a in attempts] == [(1, None)] * 4


async def test_remove_keeps_rounds_and_reports(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    sub = await submit(engine, nightly_job(tmp_path, 2), settings, now=CREATED)
    await work(engine, settings, [sub.round_id])
    (made,) = await schedule.tick(engine, settings, utc(2026, 11, 21, 3))
    await work(engine, settings, [made.round.round_id])
    result = await schedule.run_pass(engine, settings, lambda: utc(2026, 11, 21, 4), "test")
    assert [r.status.value for r in result.reports] == ["stable"]
    await schedule.remove(engine, "nightly")
    assert await scalar(engine, "SELECT count(*) FROM schedules") == 0
    assert await scalar(engine, "SELECT count(*) FROM rounds WHERE trigger = 'schedule'") == 1
    reports = await rows(engine, "SELECT schedule_id, status FROM drift_reports")
    assert [tuple(r) for r in reports] == [(None, "stable")]
