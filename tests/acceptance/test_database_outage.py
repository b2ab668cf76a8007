"""A worker rides out a database outage, through the CLI: PostgreSQL cut for 20 s (a
proxy in front of the server drops every connection and refuses new ones), a SQLite
write lock held past the worker's busy timeout. It holds on to the responses it has,
waits with one line for the outage and one for the end of it, and finishes its batch:
nothing lost, nothing sent twice, one succeeded attempt per run, no traceback."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dbproxy import database_proxy
from tests.fakeserver import FakeServer, Reply, completion, fake_server
from tests.helpers import SUCCESS_ATTEMPTS_MISMATCH, runner_process, sql, succeeded

RUNNER = [sys.executable, "-m", "runner"]
JOBS = 240


def setup(tmp_path: Path, base_url: str, db_url: str, **worker: float) -> None:
    settings = {"concurrency": 8, "poll_seconds": 0.05, "heartbeat_seconds": 0.5} | worker
    (tmp_path / "runner.toml").write_text(
        f'[endpoints.fake]\ntype = "openai"\nbase_url = "{base_url}"\ntimeout = 30\n'
        "[worker]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    )
    job = tmp_path / "j.yaml"
    job.write_text(
        "name: j\nmodel: m\nendpoint: fake\nseed: 1\nmessages: [{role: user, content: '{x}'}]\n"
        "vars: {x: [" + ", ".join(f"w{i}" for i in range(JOBS)) + "]}\n"
    )
    done = subprocess.run(
        [*RUNNER, "--db", db_url, "submit", str(job)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def burst_worker(tmp_path: Path, db_url: str) -> subprocess.Popen[str]:
    return runner_process(tmp_path, db_url, "work", "--burst", "--quiet")


def wait_until(condition: Callable[[], bool], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def finish(proc: subprocess.Popen[str], db_url: str, server: FakeServer) -> str:
    _, err = proc.communicate(timeout=180)
    received = len(server.received)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert sql(db_url, "SELECT state, count(*) FROM runs GROUP BY state") == [("succeeded", JOBS)]
    assert received == JOBS  # no response was thrown away and paid for again
    assert sql(db_url, SUCCESS_ATTEMPTS_MISMATCH) == []
    assert sql(db_url, "SELECT count(*) FROM attempts") == [(JOBS,)]
    return err


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_worker_keeps_running_through_a_20_s_postgresql_outage(
    tmp_path: Path, db_url: str
) -> None:
    slow = lambda req, n: Reply(body=completion(req.json), delay=0.05)  # noqa: E731
    with fake_server(slow) as server, database_proxy(db_url) as proxy:
        # A lease shorter than the outage: it runs out while the worker holds the results.
        setup(tmp_path, server.base_url, db_url, lease_seconds=5)
        proc = burst_worker(tmp_path, proxy.url(db_url))
        wait_until(lambda: succeeded(db_url) >= 40)
        proxy.cut()
        time.sleep(20)
        assert proc.poll() is None  # still running, waiting for the database
        proxy.restore()
        err = finish(proc, db_url, server)
    assert err.count("is unreachable") == 1 and err.count("is back after") == 1, err


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_worker_waits_out_a_sqlite_lock_held_past_its_busy_timeout(
    tmp_path: Path, db_url: str
) -> None:
    slow = lambda req, n: Reply(body=completion(req.json), delay=0.05)  # noqa: E731
    with fake_server(slow) as server:
        setup(tmp_path, server.base_url, db_url, sqlite_busy_seconds=1)
        proc = burst_worker(tmp_path, db_url)
        wait_until(lambda: succeeded(db_url) >= 40)
        held = threading.Event()

        def hold() -> None:  # another process's long write transaction
            other = sqlite3.connect(tmp_path / "runner.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(6)
            other.execute("ROLLBACK")
            other.close()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(10)
        holder.join()
        err = finish(proc, db_url, server)
    assert err.count("is unreachable") == 1 and err.count("is back after") == 1, err
    assert "database is locked" in err
