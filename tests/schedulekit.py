"""Helpers for the schedule and drift tests (not fixtures): a clock tests move, workers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import EndpointConfig, Settings
from runner.db.types import utcnow
from runner.work import Worker
from tests.replaykit import settings_with


class Clock:
    """A clock that reads what the test set, and runs on in real time from there.

    Tests jump it to a tick instead of waiting; it keeps moving so leases and retry
    backoffs still expire as they would.
    """

    def __init__(self, start: datetime) -> None:
        self.offset = start - utcnow()

    def set(self, moment: datetime) -> None:
        self.offset = moment - utcnow()

    def __call__(self) -> datetime:
        return utcnow() + self.offset


def schedule_settings(db_url: str, *endpoints: EndpointConfig) -> Settings:
    """Fast test settings whose workers look for due ticks every 20 ms."""
    base = settings_with(db_url, *endpoints)
    return replace(base, worker=replace(base.worker, schedule_seconds=0.02))


def nightly_job(
    tmp_path: Path, count: int, *, name: str = "nightly", endpoint: str = "local", **schedule: str
) -> Path:
    """A job file of ``count`` seeded jobs with a ``schedule:`` (cron 03:00 UTC by default)."""
    block = {"cron": "0 3 * * *", **schedule}
    lines = "".join(f"  {key}: {value!r}\n" for key, value in block.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nendpoint: {endpoint}\nmodel: test-model\n"
        "messages: [{role: user, content: 'Tell me about {topic}.'}]\n"
        f"vars: {{topic: [{', '.join(f'topic{i}' for i in range(count))}]}}\n"
        "seed: 42\nparams: {max_tokens: 16, temperature: 0.7}\n"
        f"schedule:\n{lines}",
        encoding="utf-8",
    )
    return path


async def run_workers(
    engine: AsyncEngine,
    settings: Settings,
    clock: Callable[[], datetime],
    until: Callable[[], Awaitable[bool]],
    *,
    count: int = 1,
    limit: float = 60,
) -> list[Worker]:
    """Run ``count`` general workers (scheduler on) until ``until()`` holds, then stop them."""
    workers = [Worker(engine, settings, clock=clock) for _ in range(count)]
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(worker.run)
            while not await until():  # noqa: ASYNC110 - the state is in the database
                await anyio.sleep(0.02)
            for worker in workers:
                worker.request_stop()
    return workers
