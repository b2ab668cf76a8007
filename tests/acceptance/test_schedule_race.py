"""Three `runner work` processes race on the same tick, on both backends: one round.

Each process starts its clock at the tick (``--now``, the testing aid), so all three see
it due at once; nobody waits for a real 03:00. The backend behind the endpoint changed
since the batch's first round (runner.toml now names the built-in model's ``v2``), so the
night's drift report says ``fingerprint_changed`` and its on-drift command runs: once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.db.types import utcnow
from runner.scheduling.cron import parse_cron
from tests.helpers import SUCCESS_ATTEMPTS_MISMATCH, sql
from tests.schedulekit import nightly_job

RUNNER = [sys.executable, "-m", "runner"]


def runner(tmp_path: Path, db_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RUNNER, "--db", db_url, *args],
        cwd=tmp_path,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def configure(tmp_path: Path, variant: str | None = None) -> None:
    lines = ["[worker]", "poll_seconds = 0.02", "schedule_seconds = 0.05", "grace_seconds = 5"]
    if variant:
        lines += ["[endpoints.local]", 'type = "local"', f'variant = "{variant}"']
    (tmp_path / "runner.toml").write_text("\n".join(lines) + "\n")


def test_three_worker_processes_racing_on_a_tick_make_one_round(
    tmp_path: Path, db_url: str
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    configure(tmp_path)
    job = nightly_job(tmp_path, 12, on_drift=f"cat > {hooks}/report-$$.json")
    first = runner(tmp_path, db_url, "run", str(job))
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    tick = parse_cron("0 3 * * *").next_after(utcnow())
    configure(tmp_path, variant="v2")  # the backend was updated overnight
    now = tick.isoformat().replace("+00:00", "Z")
    workers = [runner(tmp_path, db_url, "work", "--now", now, "--quiet") for _ in range(3)]
    try:
        # Done when the night's report ran its command and all three workers are up (a
        # worker registers as it starts, then handles SIGTERM as a graceful stop).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            hook = sql(db_url, "SELECT on_drift_state FROM drift_reports")
            up = sql(db_url, "SELECT count(*) FROM workers")[0][0]
            if hook and hook[0][0] in ("succeeded", "failed") and up == 3:
                break
            assert all(w.poll() is None for w in workers)
            time.sleep(0.05)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        ended = [w.communicate(timeout=60) for w in workers]
    for w, (_, err) in zip(workers, ended, strict=True):
        assert w.returncode == 0, err
        assert "Traceback" not in err
    rounds = sql(db_url, "SELECT number, trigger FROM rounds ORDER BY number")
    assert rounds == [(1, "submit"), (2, "schedule")]
    # Every run of the night was sent once: one attempt each, none reused.
    assert sql(
        db_url,
        "SELECT r.state, count(*), max(r.attempts), count(r.reused_from_run_id) FROM runs r "
        "JOIN rounds ro ON ro.id = r.round_id WHERE ro.number = 2 GROUP BY r.state",
    ) == [("succeeded", 12, 1, 0)]
    assert sql(
        db_url,
        "SELECT count(*) FROM attempts a JOIN runs r ON r.id = a.run_id "
        "JOIN rounds ro ON ro.id = r.round_id WHERE ro.number = 2",
    ) == [(12,)]
    assert sql(db_url, SUCCESS_ATTEMPTS_MISMATCH) == []
    assert sql(db_url, "SELECT status, on_drift_state FROM drift_reports") == [
        ("fingerprint_changed", "succeeded")
    ]
    (written,) = list(hooks.iterdir())  # one command, though three workers saw the report
    payload = json.loads(written.read_text())
    assert payload["status"] == "fingerprint_changed"
    assert payload["round"]["scheduled_for"] == now
