"""A big submit beside a working worker (issue 15, item 7), on SQLite and PostgreSQL.

SQLite has one write lock: a submit that held it for its whole file kept every worker
from storing anything (a million lines would starve them past their 60 s busy timeout).
It now writes in short transactions, its batch pending (invisible) until the last one;
PostgreSQL keeps one transaction, which workers never wait for. Either way a worker
beside a big submit finishes its own runs while the submit is still writing, and
never sees half of a batch, even one whose submit was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from sqlalchemy import text

from tests.acceptance.test_cli import RUNNER
from tests.sqlkit import sync_engine

SMALL = 40  # runs of the batch the worker works


def _job_file(path: Path, a: int, b: int, name: str) -> Path:
    """A YAML file of ``a * b`` jobs, a few hundred bytes long."""
    path.write_text(
        f"name: {name}\nendpoint: local\nmodel: m\nseed: 1\nparams: {{max_tokens: 4}}\n"
        "messages: [{role: user, content: 'about {a} and {b}'}]\n"
        f"vars:\n  a: {list(range(a))}\n  b: {list(range(b))}\n",
        encoding="utf-8",
    )
    return path


def _runner(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNNER, "--db", db_url, *args], capture_output=True, text=True, timeout=300
    )


def _scalar(db_url: str, sql: str) -> int:
    with sync_engine(db_url) as engine, engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _writing(db_url: str) -> bool:
    """Has the big submit begun writing its jobs? (The same test on the old code.)"""
    if db_url.startswith("sqlite"):  # its WAL grows past what the small batch wrote
        wal = Path(db_url.removeprefix("sqlite:///") + "-wal")
        return wal.exists() and wal.stat().st_size > 2_000_000
    return bool(
        _scalar(
            db_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'COPY jobs%' AND state = 'active'",
        )
    )


def _start_big_submit(db_url: str, tmp_path: Path, a: int, b: int) -> subprocess.Popen[str]:
    big = _job_file(tmp_path / "big.yaml", a, b, "big")
    proc = subprocess.Popen(
        [*RUNNER, "--db", db_url, "submit", str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not _writing(db_url):
        assert proc.poll() is None, f"the big submit ended before it was seen writing: {proc}"
        assert time.monotonic() < deadline, "the big submit never began writing"
        time.sleep(0.05)
    return proc


def _batches(db_url: str) -> list[tuple[str, int]]:
    result = _runner(db_url, "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    return [(b["name"], b["job_count"]) for b in json.loads(result.stdout)]


def test_a_worker_finishes_its_runs_while_a_big_submit_writes(db_url: str, tmp_path: Path) -> None:
    small = _runner(db_url, "submit", str(_job_file(tmp_path / "small.yaml", SMALL, 1, "small")))
    assert small.returncode == 0, small.stderr
    big = _start_big_submit(db_url, tmp_path, 1000, 300)  # 300,000 jobs
    try:
        worker = _runner(db_url, "work", "--burst", "--quiet")
        # The worker stored every result and exited (burst: nothing else visible to it)
        # while the submit was still writing: it was never kept from the database.
        still_writing = big.poll() is None
        assert worker.returncode == 0, worker.stderr
        assert f"{SMALL} succeeded, 0 failed" in worker.stdout
        assert still_writing, "the worker could only finish once the submit had"
        out, err = big.communicate(timeout=600)
    finally:
        big.kill()
    assert big.returncode == 0, err
    assert "300000 jobs queued" in out
    # None of the big batch's runs was touched; they are all there.
    sql = "SELECT count(*) FROM runs r JOIN jobs j ON j.id = r.job_id WHERE j.batch_id = {b}"
    assert _scalar(db_url, sql.format(b=2) + " AND r.state = 'queued'") == 300_000
    assert _scalar(db_url, sql.format(b=1) + " AND r.state = 'succeeded'") == SMALL


def test_a_killed_submit_leaves_nothing_a_reader_or_worker_sees(
    db_url: str, tmp_path: Path
) -> None:
    small = _runner(db_url, "submit", str(_job_file(tmp_path / "small.yaml", SMALL, 1, "small")))
    assert small.returncode == 0, small.stderr
    big = _start_big_submit(db_url, tmp_path, 1000, 200)
    os.kill(big.pid, signal.SIGKILL)
    big.communicate()
    # SQLite may keep the batch's first chunks, pending: listed nowhere, claimed by no one.
    assert _batches(db_url) == [("small", SMALL)]
    worker = _runner(db_url, "work", "--burst", "--quiet")
    assert worker.returncode == 0, worker.stderr
    assert f"{SMALL} succeeded, 0 failed" in worker.stdout
    # Once its time has passed (moved back here, not waited for), the next worker start
    # deletes it: only the small batch's rows are left.
    with sync_engine(db_url) as engine, engine.begin() as conn:
        conn.execute(
            text("UPDATE batches SET pending_until = :past WHERE pending_until IS NOT NULL"),
            {"past": "2000-01-01T00:00:00.000000Z" if "sqlite" in db_url else "2000-01-01Z"},
        )
    assert _runner(db_url, "work", "--burst", "--quiet").returncode == 0
    assert _scalar(db_url, "SELECT count(*) FROM jobs") == SMALL
    assert _scalar(db_url, "SELECT count(*) FROM runs") == SMALL
    assert _scalar(db_url, "SELECT count(*) FROM batches") == 1
