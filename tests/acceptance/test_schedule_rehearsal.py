"""Rehearsed ticks and burst workers, through the real CLI, on both backends: the burst
workers in subprocesses, the other commands in-process.

``runner schedule run-due --now T`` makes rounds a plain ``runner work --burst`` runs at
once; a burst worker stores the drift report of every round it finished before it exits;
and a burst worker that can claim nothing says what it waits for, and exits with one
line, rather than hang, when that is far away.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from runner.db.types import utcnow
from runner.scheduling.cron import parse_cron
from tests.acceptance.test_schedule_race import sql
from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import in_process
from tests.schedulekit import nightly_job

RUNNER = [sys.executable, "-m", "runner"]
TIMEOUT = 120  # a hang fails the test instead of blocking the run


def runner(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One CLI command to its end (killed and failed after TIMEOUT s)."""
    return subprocess.run(
        [*RUNNER, "--db", db_url, *args],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def command(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A command that is not a worker, in this process: a new process costs 1-3 s."""
    return in_process("--db", db_url, *args, cwd=tmp_path)


def configure(tmp_path: Path, *extra: str) -> None:
    lines = ["[worker]", "poll_seconds = 0.02", "schedule_seconds = 0.05", "max_attempts = 3"]
    (tmp_path / "runner.toml").write_text("\n".join([*lines, *extra]) + "\n")


def baseline(tmp_path: Path, db_url: str) -> None:
    """Batch 'b' (3 jobs, round 1 finished) and the schedule 'nightly' at 03:00 UTC."""
    configure(tmp_path)
    job = nightly_job(tmp_path, 3, name="b")
    job.write_text(job.read_text().split("schedule:")[0])
    done = command(tmp_path, db_url, "run", str(job), "--quiet")
    assert done.returncode == 0, done.stderr
    added = command(tmp_path, db_url, "schedule", "add", "nightly", "b", "--cron", "0 3 * * *")
    assert added.returncode == 0, added.stderr


def nights(count: int) -> list[str]:
    """The next ``count`` 03:00 UTC ticks from tomorrow on, as --now takes them."""
    cron = parse_cron("0 3 * * *")
    tick = cron.next_after(utcnow() + timedelta(days=1))
    found = []
    for _ in range(count):
        found.append(tick.isoformat().replace("+00:00", "Z"))
        tick = cron.next_after(tick)
    return found


def test_a_tick_rehearsed_with_run_due_is_run_by_a_plain_burst_worker(
    tmp_path: Path, db_url: str
) -> None:
    baseline(tmp_path, db_url)
    for number, night in enumerate(nights(2), start=2):
        due = command(tmp_path, db_url, "schedule", "run-due", "--now", night)
        assert due.returncode == 0, due.stderr
        assert f"batch 1 round {number}, 3 runs queued" in due.stdout
        work = runner(tmp_path, db_url, "work", "--burst", "--quiet")
        assert work.returncode == 0, work.stderr
        assert work.stdout.startswith("worker done: 3 succeeded, 0 failed"), work.stdout
        # The round is done and its drift report stored when the worker has returned.
        assert sql(db_url, f"SELECT id FROM drift_reports WHERE round_id = {number}") == [
            (number - 1,)
        ]
    assert sql(db_url, "SELECT state, count(*) FROM runs GROUP BY state ORDER BY state") == [
        ("succeeded", 9)
    ]


def test_a_burst_worker_runs_its_tick_and_stores_its_drift_report_before_it_exits(
    tmp_path: Path, db_url: str
) -> None:
    # Several nights: the side task that ticks and reports races the claim loop, and a
    # lost race showed as a worker exiting with the round unrun or unreported.
    baseline(tmp_path, db_url)
    for number, night in enumerate(nights(4), start=2):
        work = runner(tmp_path, db_url, "work", "--burst", "--quiet", "--now", night)
        assert work.returncode == 0, work.stderr
        assert work.stdout.startswith("worker done: 3 succeeded"), (night, work.stdout)
        assert sql(db_url, f"SELECT status FROM drift_reports WHERE round_id = {number}") == [
            ("stable",)
        ], night


def test_a_burst_worker_says_what_it_waits_for_and_exits_if_it_is_far_away(
    tmp_path: Path, db_url: str
) -> None:
    def script(request: Received, count: int) -> Reply:
        content = request.json["messages"][-1]["content"]
        if count == 1 and "soon" in content:  # a retry in 3 s: the worker waits for it
            return Reply(429, {"error": {"message": "slow down"}}, {"retry-after": "3"})
        if "later" in content:  # a retry in an hour: too far for a burst worker
            return Reply(429, {"error": {"message": "quota"}}, {"retry-after": "3600"})
        return Reply(body=completion(request.json))

    with fake_server(script) as server:
        configure(
            tmp_path, "[endpoints.fake]", 'type = "openai"', f'base_url = "{server.base_url}"'
        )
        for name in ("soon", "later"):
            (tmp_path / f"{name}.yaml").write_text(
                f"name: {name}\nendpoint: fake\nmodel: m\n"
                f"messages: [{{role: user, content: '{name}'}}]\n",
                encoding="utf-8",
            )
            submitted = command(tmp_path, db_url, "submit", f"{name}.yaml")
            assert submitted.returncode == 0, submitted.stderr
            work = runner(tmp_path, db_url, "work", "--burst", "--progress-interval", "0.2")
            if name == "soon":
                assert work.returncode == 0, work.stderr
                assert "1 succeeded, 0 failed, 1 retries" in work.stdout
                assert "| waiting for 1 run of batch 1 round 1, queued until " in work.stderr
            else:
                assert work.returncode == 1, work.stderr
                assert "| waiting for 1 run of batch 2 round 1, queued until " in work.stderr
                error = work.stderr.splitlines()[-1]
                assert error.startswith("error: nothing to run before "), error
                assert "longer than a burst worker waits (5 min); queued for later: " in error
                assert "1 run of batch 2 round 1; run `runner work` to wait for them" in error
                assert "Traceback" not in work.stderr
    assert sql(db_url, "SELECT round_id, state, attempts FROM runs ORDER BY round_id") == [
        (1, "succeeded", 2),
        (2, "queued", 1),
    ]
