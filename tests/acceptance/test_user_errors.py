"""Errors a user can fix end in one line `error: ...` and a non-zero exit, never a
traceback, however deep in a worker's task group they were raised (issue 14, defect 2).

The real binary in a subprocess, on SQLite and PostgreSQL: a traceback only shows there.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from sqlalchemy import text

from runner.db import engine as db
from tests.acceptance.test_cli import RUNNER
from tests.helpers import in_process

KEY_ENV = "SEEDRUNNER_TEST_UNSET_KEY"  # never set: the key the endpoint needs is missing
CONFIG = f"""
[worker]
poll_seconds = 0.05

[endpoints.remote]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "{KEY_ENV}"
"""
MISSING = (
    f"error: endpoint 'remote': the environment variable {KEY_ENV} is not set "
    "(it must hold the API key)"
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != KEY_ENV}


def _runner(db_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*RUNNER, "--db", db_url, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _submit(db_url: str, job: Path, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``runner submit``, a warning at most: in this process (a new one costs 1-3 s)."""
    return in_process("--db", db_url, "submit", str(job), cwd=cwd, env={KEY_ENV: None})


def remote_job(tmp_path: Path, endpoint: str = "remote") -> Path:
    path = tmp_path / "remote.yaml"
    path.write_text(
        f"endpoint: {endpoint}\nmodel: m\nmessages: [{{role: user, content: hi}}]\nseeds: [1, 2]\n"
    )
    return path


def _states(db_url: str) -> list[tuple[int, str, int]]:
    engine = db.create_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT j.batch_id, r.state, count(*) FROM runs r "
                    "JOIN jobs j ON j.id = r.job_id GROUP BY j.batch_id, r.state "
                    "ORDER BY j.batch_id, r.state"
                )
            )
            return [(int(b), str(s), int(n)) for b, s, n in rows]
    finally:
        engine.dispose()


def test_a_missing_api_key_is_one_line_and_leaves_the_runs_queued(
    db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "runner.toml").write_text(CONFIG)
    job = remote_job(tmp_path)
    submitted = _submit(db_url, job, cwd=tmp_path)
    # submit still queues (the key may be set where the workers run), and warns.
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stderr.splitlines() == [
        "warning: " + MISSING.removeprefix("error: ") + "; a worker needs it to send these runs"
    ]
    for args in (("work", "--burst"), ("run", str(job))):
        result = _runner(db_url, *args, "--quiet", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [MISSING]
    # Nothing was claimed nor failed; `run` refused before queueing a second batch.
    assert _states(db_url) == [(1, "queued", 2)]


def test_a_missing_key_met_inside_a_running_worker_is_one_line(db_url: str, tmp_path: Path) -> None:
    # The worker starts with nothing to do, then meets the endpoint without a key: the
    # error is raised inside its task groups, the CLI still prints it once, on one line.
    (tmp_path / "runner.toml").write_text(CONFIG)
    assert _submit(db_url, remote_job(tmp_path, "local"), cwd=tmp_path).returncode == 0
    proc = subprocess.Popen(
        [*RUNNER, "--db", db_url, "work", "--quiet"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while _states(db_url) != [(1, "succeeded", 2)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _submit(db_url, remote_job(tmp_path), cwd=tmp_path).returncode == 0
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err, err
    assert proc.returncode == 2 and err.splitlines() == [MISSING]
    # The claimed run went back to the queue: nothing failed.
    assert _states(db_url) == [(1, "succeeded", 2), (2, "queued", 2)]
