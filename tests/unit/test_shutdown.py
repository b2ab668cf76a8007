"""A command's event loop ends even when a task survives the first cancellation.

aiosqlite's ``close`` does this when SQLAlchemy closes a connection whose query was
cancelled: it catches the cancellation in a ``finally`` and awaits a future that no
thread will ever resolve. asyncio's own shutdown cancels once and waits forever.
"""

from __future__ import annotations

import asyncio

import pytest

from runner.cli.base import _end_leftover_tasks


async def _close_like_aiosqlite(never: asyncio.Future[None]) -> None:
    try:
        await never
    finally:
        await asyncio.get_running_loop().create_future()  # the stop no thread will see


@pytest.mark.timeout(10)  # without the helper this would hang
def test_a_task_that_survives_one_cancellation_is_ended() -> None:
    async def main() -> asyncio.Task[None]:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stuck = asyncio.create_task(_close_like_aiosqlite(never))
        await asyncio.sleep(0)
        await _end_leftover_tasks()
        assert stuck.done()  # before asyncio's shutdown, whose one cancel would not do
        return stuck

    assert asyncio.run(main()).cancelled()


@pytest.mark.timeout(10)
def test_nothing_left_returns_at_once() -> None:
    asyncio.run(_end_leftover_tasks())
