"""`runner sql` as a subprocess: the queue keeps moving under it, and a signal ends its query.

Two endless queries run while an escape that used to freeze the queue is tried and a
worker runs a whole batch; then SIGINT ends one and SIGTERM the other, promptly, and
on PostgreSQL no backend is left running either.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.sqlkit import batch_file, sync_engine

RUNNER = [sys.executable, "-m", "runner"]
ENDLESS = (
    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) "
    "SELECT count(*) AS sandbox_probe FROM c"
)
ESCAPES = {
    "postgresql": "DO $$ BEGIN LOCK TABLE runs IN ACCESS EXCLUSIVE MODE; "
    "PERFORM pg_sleep(30); END $$",
    "sqlite": "BEGIN EXCLUSIVE",
}


def environment(db_url: str) -> dict[str, str]:
    # A timeout far beyond the test: only the signals may end the queries.
    return {**os.environ, "RUNNER_DATABASE_URL": db_url, "RUNNER_SQL_TIMEOUT": "3600"}


def wait_for(check: Callable[[], bool], what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.2)


def running_queries(db_url: str) -> int:
    """PostgreSQL backends of this database running our endless query (as the wrapper)."""
    with sync_engine(db_url) as engine, engine.connect() as conn:
        found = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'active' "
                "AND (query LIKE '%runner_sql(%' OR query LIKE '%sandbox_probe%')"
            )
        )
    return int(found or 0)


def has_open(pid: int, path: Path) -> bool:
    """The process has the SQLite file open (it is about to query it, or querying)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())
    except OSError:
        return False


def test_the_queue_moves_under_runner_sql_and_signals_end_its_queries(
    db_url: str, tmp_path: Path
) -> None:
    backend = make_url(db_url).get_backend_name()
    env = environment(db_url)
    queries = {
        signum: subprocess.Popen(
            [*RUNNER, "sql", ENDLESS],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        if backend == "postgresql":
            wait_for(lambda: running_queries(db_url) == 2, "both queries to run")
        else:
            path = Path(make_url(db_url).database or "")
            wait_for(lambda: all(has_open(p.pid, path) for p in queries.values()), "both")

        escape = subprocess.run(
            [*RUNNER, "sql", ESCAPES[backend]], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert escape.returncode == 1 and escape.stderr.startswith("error: "), escape.stderr
        assert escape.stderr.count("\n") == 1 and "Traceback" not in escape.stderr

        keys = tuple(f"k{i}" for i in range(20))
        done = subprocess.run(
            [*RUNNER, "run", str(batch_file(tmp_path / "b.jsonl", keys)), "--endpoint",
             "local", "--quiet"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert all(p.poll() is None for p in queries.values()), "a query ended by itself"

        for signum, proc in queries.items():
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=60)
            name = signal.Signals(signum).name
            assert (proc.returncode, out) == (128 + signum, "")
            assert err == f"error: stopped by {name}: the statement was cancelled\n"
        if backend == "postgresql":
            wait_for(lambda: running_queries(db_url) == 0, "the server to stop the queries", 30)
    finally:
        for proc in queries.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
