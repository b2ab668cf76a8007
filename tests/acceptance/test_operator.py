"""What an operator sees: live progress on a terminal, lines elsewhere, logs without secrets."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import in_process, on_terminal

ROOT = Path(__file__).resolve().parents[2]
RUNNER = [sys.executable, "-m", "runner"]
PLANTED = "sk-PLANTED-0123456789abcdefXYZ"


def test_run_on_a_terminal_shows_live_progress_reaching_100_percent(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    args = [*RUNNER, "run", str(ROOT / "jobs" / "quickstart.yaml"), "--progress-interval", "0.1"]
    code, text = on_terminal(args, cwd=tmp_path, env=env, limit=60)
    assert code == 0
    assert "━" in text  # rich's progress bar was drawn
    assert re.search(r"100%\s+6/6", text), text[-2000:]
    assert "req/s" in text and "ETA" in text and "in flight" in text


def test_run_without_a_terminal_prints_periodic_lines_and_quiet_prints_none(
    tmp_path: Path,
) -> None:
    slow = lambda req, n: Reply(body=completion(req.json), delay=0.05)  # noqa: E731
    with fake_server(slow) as server:
        (tmp_path / "runner.toml").write_text(
            f'[endpoints.fake]\ntype = "openai"\nbase_url = "{server.base_url}"\n'
            "[worker]\nconcurrency = 2\npoll_seconds = 0.02\n"
        )
        job = tmp_path / "j.yaml"
        job.write_text(
            "model: m\nendpoint: fake\nmessages: [{role: user, content: '{x}'}]\n"
            "vars: {x: [" + ", ".join(str(i) for i in range(30)) + "]}\n"
        )
        result = subprocess.run(
            [*RUNNER, "run", str(job), "--progress-interval", "0.2"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        lines = [x for x in result.stderr.splitlines() if "batch 1 j round 1:" in x]
        assert len(lines) >= 3, result.stderr
        assert "30/30 done (100%)" in lines[-1]
        assert re.search(r"\d+/30 done \(\d+%\) \| [\d.]+ req/s .* in flight .* ETA", lines[1])
        quiet = in_process("run", "-q", str(job), "--name", "again", cwd=tmp_path)
        assert quiet.returncode == 0 and "done (" not in quiet.stderr


def test_planted_api_key_never_reaches_logs_errors_or_the_database(tmp_path: Path) -> None:
    def echo_key(req: Received, n: int) -> Reply:
        key = req.headers["authorization"].removeprefix("Bearer ")
        if n % 2:
            return Reply(
                500, {"error": {"message": f"upstream refused key {key}", "type": "server_error"}}
            )
        return Reply(
            401,
            {
                "error": {
                    "message": f"Incorrect API key provided: {key}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )

    with fake_server(echo_key) as server:
        (tmp_path / "runner.toml").write_text(
            f'[endpoints.fake]\ntype = "openai"\nbase_url = "{server.base_url}"\n'
            'api_key_env = "FAKE_KEY"\n[worker]\npoll_seconds = 0.02\nmax_attempts = 3\n'
            "backoff_base_seconds = 0.01\n"
        )
        job = tmp_path / "j.yaml"
        job.write_text(
            "model: m\nendpoint: fake\nmessages: [{role: user, content: '{x}'}]\n"
            "vars: {x: [a, b, c, d, e, f]}\n"
        )
        env = {**os.environ, "FAKE_KEY": PLANTED}
        result = subprocess.run(
            [
                *RUNNER,
                "--log-level",
                "debug",
                "--log-format",
                "json",
                "run",
                str(job),
                "--progress-interval",
                "0.1",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert server.received and all(
        r.headers["authorization"] == f"Bearer {PLANTED}" for r in server.received
    )  # the key was really used...
    assert PLANTED not in result.stdout and PLANTED not in result.stderr  # ...and never shown
    assert "***" in result.stderr
    with sqlite3.connect(tmp_path / "runner.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert PLANTED not in dump and "Incorrect API key provided: ***" in dump
    # JSON log lines about a run carry its batch, round, key and run id.
    records = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    about_runs = [r for r in records if "run_id" in r]
    assert about_runs and {"batch", "round", "key", "run_id"} <= set(about_runs[0])
