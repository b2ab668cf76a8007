"""Ctrl-C on `runner run`, then the command it prints: the same batch finishes, and no
request is sent twice (a new user's first steps, issue 14), on both backends."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import sql, succeeded, yaml_job

RUNNER = [sys.executable, "-m", "runner"]
JOBS = 12


def test_ctrl_c_prints_the_command_that_resumes_and_it_finishes_the_batch(
    db_url: str, tmp_path: Path
) -> None:
    def slow(req: Received, n: int) -> Reply:
        return Reply(body=completion(req.json), delay=0.3)

    with fake_server(slow) as server:
        (tmp_path / "runner.toml").write_text(
            f'[endpoints.fake]\ntype = "openai"\nbase_url = "{server.base_url}"\ntimeout = 10\n'
            "[worker]\nconcurrency = 2\npoll_seconds = 0.1\n"
        )
        job = str(yaml_job(tmp_path, JOBS))
        first = subprocess.Popen(
            [*RUNNER, "--db", db_url, "run", "-q", "--endpoint", "fake", job],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while succeeded(db_url) < 2 and first.poll() is None:
            assert time.monotonic() < deadline, "no run finished within a minute"
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 1, out + err
        done = succeeded(db_url)
        assert done < JOBS, "the test needs a stop before the end: slow the server down"
        (line,) = [x for x in err.splitlines() if "again to resume" in x]
        assert line.startswith(f"stopped with {JOBS - done} runs left: run `runner ")
        match = re.search(r"`([^`]+)`", line)
        assert match is not None
        words = shlex.split(match[1])
        assert words == ["runner", "--db", db_url, "run", job, "--endpoint", "fake"]

        again = subprocess.run(
            [*RUNNER, *words[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.startswith(
            f"resuming batch 1 (t) round 1 ({JOBS - done} of {JOBS} runs left)"
        )
        assert f"round 1 (submit): {JOBS}/{JOBS} done: {JOBS} succeeded" in again.stdout
    assert sql(db_url, "SELECT count(*) FROM batches") == [(1,)]
    assert sql(db_url, "SELECT count(*) FROM attempts") == [(JOBS,)]
    assert len(server.received) == JOBS  # no request sent twice
