"""A worker killed with SIGKILL at each phase of a provider batch, then a new worker.

The local Batch API runs in this process (``running_server``), so it outlives the
workers; its log has one line per executed batch line. Whatever phase the kill hits
(before the upload, after it, after the provider batch was created, half-way through
downloading its results, half-way through storing them), the next worker finds the
provider batch the dead one left: every run succeeds with exactly one succeeded attempt,
and no custom_id is ever executed twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.localmodel.batches import BatchOptions
from runner.localmodel.server import ServerOptions, running_server
from runner.work.batches.results import KILL_AT_ENV
from tests.helpers import sql, yaml_job
from tests.replaykit import invoke

pytestmark = pytest.mark.timeout(180)

JOBS = 12


def _configure(tmp_path: Path, base_url: str) -> None:
    (tmp_path / "runner.toml").write_text(
        "[worker]\nlease_seconds = 1.5\nheartbeat_seconds = 0.3\npoll_seconds = 0.05\n"
        "batch_poll_seconds = 0.2\n\n"
        f'[endpoints.serve]\ntype = "openai"\nbase_url = "{base_url}"\ntimeout = 10\n'
        'mode = "batch"\n',
        encoding="utf-8",
    )


def _runner(tmp_path: Path, db_url: str, *args: str, kill_at: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_ENV}
    if kill_at:
        env[KILL_AT_ENV] = kill_at
    done = subprocess.run(
        [sys.executable, "-m", "runner", "--db", db_url, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stderr


@contextlib.contextmanager
def _serving(tmp_path: Path, db_url: str, *, turnaround_ms: float, log: Path) -> Iterator[None]:
    """The local Batch API in this process, the endpoint ``serve`` on it, JOBS queued."""
    options = ServerOptions(
        port=0,
        log_level="warning",
        batches=BatchOptions(turnaround_ms=turnaround_ms, log=str(log)),
    )
    with running_server(options) as url:
        _configure(tmp_path, url)
        job = yaml_job(tmp_path, JOBS, extra="endpoint: serve\n")
        code, out, err = invoke(db_url, "submit", str(job))
        assert code == 0, out + err
        yield


@pytest.mark.parametrize(
    "phase", ["before-upload", "after-upload", "after-create", "mid-download", "mid-store:5"]
)
def test_a_worker_killed_at_any_phase_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, db_url: str, phase: str
) -> None:
    log = tmp_path / "executed.jsonl"
    with _serving(tmp_path, db_url, turnaround_ms=300, log=log):
        code, err = _runner(tmp_path, db_url, "work", "--burst", "-q", kill_at=phase)
        assert code == -9, err  # killed itself at that phase
        code, err = _runner(tmp_path, db_url, "work", "--burst", "-q")
        assert code == 0, err
    assert sql(db_url, "SELECT state, count(*) FROM runs GROUP BY state") == [("succeeded", JOBS)]
    assert sql(
        db_url,
        "SELECT count(*), count(DISTINCT run_id) FROM attempts WHERE outcome = 'succeeded'",
    ) == [(JOBS, JOBS)]
    executed = Counter(json.loads(line)["custom_id"] for line in log.read_text().splitlines())
    assert executed and max(executed.values()) == 1, executed
    # Every stored result is one the server executed, under the run's own attempt.
    stored = {
        f"run-{run_id}-{number}"
        for run_id, number in sql(
            db_url, "SELECT run_id, number FROM attempts WHERE outcome = 'succeeded'"
        )
    }
    assert stored <= set(executed)
    batches = sql(
        db_url, "SELECT count(*), count(DISTINCT provider_batch_id) FROM provider_batches"
    )
    if phase == "after-create":  # found by its metadata, not created again
        assert batches == [(1, 1)]
        assert stored == set(executed)


def test_cancel_during_a_provider_batch_cancels_it_and_stores_nothing(
    tmp_path: Path, db_url: str
) -> None:
    with _serving(tmp_path, db_url, turnaround_ms=60_000, log=tmp_path / "executed.jsonl"):
        worker = subprocess.Popen(
            [sys.executable, "-m", "runner", "--db", db_url, "work", "--burst", "-q"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            submitted = "SELECT count(*) FROM provider_batches WHERE state = 'submitted'"
            while sql(db_url, submitted) != [(1,)] and time.monotonic() < deadline:
                time.sleep(0.05)
            code, out, err = invoke(db_url, "cancel", "1")
            assert code == 0, out + err
            assert f"cancelled 0 queued and {JOBS} running runs" in out
            assert "1 provider batches are cancelled" in out
            _, err = worker.communicate(timeout=60)
        finally:
            worker.kill()
    assert worker.returncode == 0, err
    assert sql(db_url, "SELECT state, count(*) FROM runs GROUP BY state") == [("cancelled", JOBS)]
    assert sql(db_url, "SELECT state, provider_state FROM provider_batches") == [
        ("done", "cancelled")
    ]
    assert sql(db_url, "SELECT count(*) FROM attempts WHERE outcome = 'succeeded'") == [(0,)]
