"""Leases follow the database's clock: a worker on a machine whose clock runs ahead does
not take live leases from a healthy worker, nor store timestamps in the future.

PostgreSQL only: workers there run on many machines. On SQLite every worker is on the
database's machine and shares its clock (README, Crash safety)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.db.types import utcnow
from runner.submit import submit
from runner.work import Worker
from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import SUCCESS_ATTEMPTS_MISMATCH, rows, wait_for, with_fake, yaml_job

pytestmark = pytest.mark.anyio
AHEAD = timedelta(minutes=2)


def ahead() -> datetime:
    """A machine whose clock runs two minutes fast."""
    return utcnow() + AHEAD


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_worker_whose_clock_runs_ahead_takes_no_live_lease(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    answer = threading.Event()

    def held(req: Received, n: int) -> Reply:
        answer.wait(30)
        return Reply(body=completion(req.json))

    with fake_server(held) as server:
        # A lease shorter than the skew: on its own clock, the fast worker would see
        # every lease of the healthy one as long expired.
        settings = with_fake(
            db_url, server.base_url, timeout=60, concurrency=10, poll_seconds=0.05,
            lease_seconds=60,
        )  # fmt: skip
        await submit(engine, yaml_job(tmp_path, 10), settings, endpoint="fake")
        healthy = Worker(engine, settings)
        fast = Worker(engine, settings, clock=ahead, machine_clock=ahead, scheduler=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(healthy.run)
            await wait_for(lambda: len(server.received) == 10)
            tg.start_soon(fast.run)
            await wait_for(lambda: fast.rounds_seen or fast.clock() < ahead() - AHEAD / 2)
            await anyio.sleep(0.5)  # a few claims of the fast worker
            assert fast.rounds_seen == set()  # it took nothing
            # What it stored is not in the future.
            (row,) = await rows(
                engine,
                "SELECT started_at - clock_timestamp() AS ahead FROM workers WHERE id = :id",
                id=fast.id,
            )
            assert row.ahead < timedelta(seconds=5)
            answer.set()
            await wait_for(lambda: healthy.stats.succeeded == 10)
            healthy.request_stop()
            fast.request_stop()
    assert len(server.received) == 10  # nothing sent twice
    assert await rows(engine, SUCCESS_ATTEMPTS_MISMATCH) == []
