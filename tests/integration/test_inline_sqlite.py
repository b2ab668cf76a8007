"""The worker's inline SQLite connection: it never blocks the event loop on another
process's write lock, and what a failed transaction did is not kept.

SQLite only: PostgreSQL workers use the async engine for everything.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import WorkerConfig, load_settings
from runner.db import engine as db
from runner.work import Worker

pytestmark = pytest.mark.anyio


def _url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    db.ensure_schema(url)
    return url


def _add_price(conn: Connection) -> int:
    conn.execute(
        text(
            "INSERT INTO model_prices (model, input_per_1m, output_per_1m, updated_at) "
            "VALUES ('m', 1, 2, '2030-01-01T00:00:00.000000+00:00')"
        )
    )
    return int(conn.execute(text("SELECT count(*) FROM model_prices")).scalar_one())


def _hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection (as another process would) holds the write lock for a while."""
    locked = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        other.execute("ROLLBACK")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(5)
    return thread


async def test_waits_for_the_lock_without_blocking_the_loop(tmp_path: Path) -> None:
    inline = db.InlineSQLite(_url(tmp_path))
    holder = _hold_write_lock(tmp_path / "runner.db", 0.5)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            started = time.monotonic()
            count = await inline.run(_add_price)
            waited = time.monotonic() - started
            tg.cancel_scope.cancel()
    finally:
        holder.join()
        inline.dispose()
    assert count == 1
    assert waited >= 0.4  # it did wait for the other writer...
    assert ticks >= 20  # ...while the loop kept running (a blocked loop would tick ~0 times)


async def test_gives_up_after_its_busy_timeout_and_keeps_nothing(tmp_path: Path) -> None:
    url = _url(tmp_path)
    inline = db.InlineSQLite(url, busy_timeout_s=0.2)
    holder = _hold_write_lock(tmp_path / "runner.db", 1.0)
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            await inline.run(_add_price)
    finally:
        holder.join()
    # Free again: nothing of the failed tries was kept, and the connection still works.
    assert await inline.run(_add_price) == 1
    inline.dispose()


async def test_an_error_inside_rolls_the_transaction_back(tmp_path: Path) -> None:
    inline = db.InlineSQLite(_url(tmp_path))

    def add_then_fail(conn: Connection) -> None:
        _add_price(conn)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await inline.run(add_then_fail)
    assert await inline.run(_add_price) == 1
    inline.dispose()


def test_refuses_a_postgresql_url() -> None:
    with pytest.raises(db.ConfigError, match="needs a SQLite URL"):
        db.InlineSQLite("postgresql://postgres@127.0.0.1:5432/test")


async def test_never_checkpoints_itself_and_checkpoint_does_it_off_the_loop(
    tmp_path: Path,
) -> None:
    """A checkpoint at a commit blocked the loop for up to 250 ms: the inline connection
    leaves the WAL to ``checkpoint``, which the worker calls from aiosqlite's thread."""
    url = _url(tmp_path)
    inline = db.InlineSQLite(url)

    def fill(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE scratch (x TEXT)"))
        conn.execute(text("INSERT INTO scratch VALUES (:x)"), [{"x": "y" * 1000}] * 20_000)

    await inline.run(fill)  # (its connection stays open: the last to close checkpoints)
    database = tmp_path / "runner.db"
    before = database.stat().st_size
    assert (tmp_path / "runner.db-wal").stat().st_size > 20_000_000  # all of it in the WAL
    engine = db.create_engine_async(url)
    try:
        await db.checkpoint(engine)
        assert database.stat().st_size > before + 20_000_000
    finally:
        await engine.dispose()
        inline.dispose()


async def test_a_stop_waits_for_a_side_loops_write_instead_of_stranding_its_lock(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock while the worker stops with no grace: its
    registry heartbeat is waiting for that lock. Cancelled there, the heartbeat's
    connection would take the lock once it came free and never let it go, and the
    worker's last write (unregistering) failed with "database is locked"."""
    url = _url(tmp_path)
    settings = load_settings(database_url=url)
    settings = replace(
        settings,
        worker=WorkerConfig(poll_seconds=30, heartbeat_seconds=0.05, grace_seconds=0.01),
    )
    engine = db.create_engine_async(url)
    worker = Worker(engine, settings)
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                while not await _scalar(engine, "SELECT count(*) FROM workers"):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
                await anyio.sleep(0.2)  # its first claim is done: it sleeps for 30 s
                holder = _hold_write_lock(tmp_path / "runner.db", 0.6)
                await anyio.sleep(0.2)  # its heartbeat now waits for the lock
                worker.request_stop()
            holder.join()
        assert await _scalar(engine, "SELECT count(*) FROM workers") == 0
    finally:
        await engine.dispose()


async def _scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql))
