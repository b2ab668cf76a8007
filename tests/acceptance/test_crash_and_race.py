"""Worker processes killed with SIGKILL, and several workers racing, on both backends.

Nothing may be lost (every run ends succeeded) and nothing stored twice (exactly one
successful attempt per run); racing workers must never execute a run twice.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from runner.localmodel.server import ServerOptions, running_server
from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import SUCCESS_ATTEMPTS_MISMATCH, runner_process, sql, succeeded

RUNNER = [sys.executable, "-m", "runner"]


def write_jobs(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "jobs.jsonl"
    with path.open("w") as out:
        for i in range(count):
            body = {
                "model": "m",
                "seed": i,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"Mars fact {i}"}],
            }
            out.write(
                json.dumps(
                    {
                        "custom_id": f"j{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + "\n"
            )
    return path


def configure(tmp_path: Path, base_url: str, **worker: float) -> None:
    lines = [
        f'[endpoints.serve]\ntype = "openai"\nbase_url = "{base_url}"\ntimeout = 5\n',
        "[worker]",
    ] + [f"{k} = {v}" for k, v in worker.items()]
    (tmp_path / "runner.toml").write_text("\n".join(lines) + "\n")


runner = runner_process


def test_sigkill_at_random_moments_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, db_url: str
) -> None:
    rng = random.Random(20261122)
    with running_server(ServerOptions(port=0, latency_ms="1-10", log_level="warning")) as url:
        configure(
            tmp_path,
            url,
            lease_seconds=1.5,
            heartbeat_seconds=0.5,
            poll_seconds=0.05,
            concurrency=32,
        )
        submit = runner(
            tmp_path, db_url, "submit", "--endpoint", "serve", str(write_jobs(tmp_path, 2000))
        )
        _, err = submit.communicate(timeout=60)
        assert submit.returncode == 0, err
        kills = 0
        for _ in range(4):
            before = succeeded(db_url)
            proc = runner(tmp_path, db_url, "work")
            deadline = time.monotonic() + 30
            while succeeded(db_url) <= before and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
            kills += 1
            if succeeded(db_url) == 2000:
                break
        assert kills >= 2
        final = runner(tmp_path, db_url, "work", "--burst")
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err
    assert sql(db_url, "SELECT state, count(*) FROM runs GROUP BY state") == [("succeeded", 2000)]
    assert sql(db_url, "SELECT count(DISTINCT job_id) FROM runs") == [(2000,)]
    per_run = sql(
        db_url,
        "SELECT run_id, count(*) FROM attempts WHERE outcome = 'succeeded' "
        "GROUP BY run_id HAVING count(*) <> 1",
    )
    assert per_run == []
    assert sql(db_url, SUCCESS_ATTEMPTS_MISMATCH) == []
    assert sql(
        db_url, "SELECT count(DISTINCT run_id) FROM attempts WHERE outcome = 'succeeded'"
    ) == [(2000,)]
    # The kills hit work in progress: some runs were taken back from a dead worker.
    assert sql(db_url, "SELECT count(*) FROM runs WHERE attempts > 1")[0][0] > 0


def test_a_kill_counts_the_tries_that_were_sent_and_no_others(tmp_path: Path, db_url: str) -> None:
    """A worker claims up to four times its concurrency ahead of its request slots;
    killed with four requests out, those four tries count and the others do not."""
    answer = threading.Event()

    def hang_until_answered(request: Received, count: int) -> Reply:
        answer.wait(60)
        return Reply(body=completion(request.json))

    with fake_server(hang_until_answered) as server:
        configure(
            tmp_path, server.base_url, lease_seconds=1.5, heartbeat_seconds=0.5,
            poll_seconds=0.05, concurrency=4,
        )  # fmt: skip
        submit = runner(
            tmp_path, db_url, "submit", "--endpoint", "serve", str(write_jobs(tmp_path, 20))
        )
        assert submit.communicate(timeout=60)[0] is not None and submit.returncode == 0
        proc = runner(tmp_path, db_url, "work")
        deadline = time.monotonic() + 60
        marked = "SELECT count(*) FROM runs WHERE sent_attempt = 1"
        while sql(db_url, marked) != [(4,)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.received) == 4 and sql(db_url, marked) == [(4,)]
        assert sql(db_url, "SELECT count(*) FROM runs WHERE state = 'running'") == [(16,)]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        answer.set()
        final = runner(tmp_path, db_url, "work", "--burst")
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err
    sent = Counter(r.json["seed"] for r in server.received)
    assert len(server.received) == 24 and sorted(sent.values()) == [1] * 16 + [2] * 4
    runs = sql(
        db_url,
        "SELECT j.seed, r.state, r.attempts FROM runs r JOIN jobs j ON j.id = r.job_id",
    )
    assert sorted(runs) == sorted((seed, "succeeded", sent[seed]) for seed in range(20))
    assert sql(db_url, SUCCESS_ATTEMPTS_MISMATCH) == []


def test_racing_workers_never_execute_a_run_twice(tmp_path: Path, db_url: str) -> None:
    workers = 2 if db_url.startswith("sqlite") else 3
    with fake_server() as server:
        configure(tmp_path, server.base_url, poll_seconds=0.02, concurrency=8)
        submit = runner(
            tmp_path, db_url, "submit", "--endpoint", "serve", str(write_jobs(tmp_path, 600))
        )
        _, err = submit.communicate(timeout=60)
        assert submit.returncode == 0, err
        procs = [runner(tmp_path, db_url, "work", "--burst") for _ in range(workers)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "database is locked" not in err
    assert len(server.received) == 600
    assert len({r.body for r in server.received}) == 600
    assert sql(db_url, "SELECT state, count(*), max(attempts) FROM runs GROUP BY state") == [
        ("succeeded", 600, 1)
    ]
    assert sql(db_url, "SELECT count(*), count(DISTINCT run_id) FROM attempts") == [(600, 600)]
    assert sql(db_url, SUCCESS_ATTEMPTS_MISMATCH) == []
    by_worker = sql(db_url, "SELECT worker, count(*) FROM attempts GROUP BY worker")
    assert len(by_worker) == workers, by_worker  # every process did part of the work
