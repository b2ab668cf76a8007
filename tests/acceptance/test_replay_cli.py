"""Replay and compare with the real ``runner`` binary, against ``runner serve --variant v2``.

The scenario a user follows after a backend update: run a batch, replay it as it was
(identical outputs), replay it on the updated server (other fingerprint), and let
``compare --fail-under`` gate on it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import openai

from tests.acceptance.test_cli import ROOT, RUNNER, run
from tests.helpers import in_process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(port: int) -> None:
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
        while True:
            try:
                client.models.list()
                return
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "runner serve did not start"
                time.sleep(0.1)


def test_replay_compare_gate_on_an_updated_backend(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "runner.toml").write_text(
        f'[endpoints.updated]\ntype = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
    )
    server = subprocess.Popen(
        [*RUNNER, "serve", "--port", str(port), "--variant", "v2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(port)
        done = in_process("run", str(ROOT / "jobs" / "quickstart.yaml"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        same = run("replay", "quickstart", "--work", cwd=tmp_path)
        assert same.returncode == 0, same.stderr
        gate = in_process("compare", "quickstart", "--fail-under", "100%", cwd=tmp_path)
        assert gate.returncode == 0, gate.stderr
        assert "exact matches  6/6 (100.0%)" in gate.stdout

        moved = run("replay", "quickstart", "--endpoint", "updated", "--work", cwd=tmp_path)
        assert moved.returncode == 0, moved.stderr
        assert "round 3 (replay of all, endpoint updated): 6 runs queued" in moved.stdout
        gate = in_process(
            "compare", "quickstart", "--fail-under", "0.9", "--format", "json", cwd=tmp_path
        )
        assert gate.returncode == 1
        assert "is under --fail-under 90.0%" in gate.stderr
        summary = json.loads(gate.stdout)["summary"]
        assert summary["by_fingerprint"]["changed"]["jobs"] == 6
        assert len(summary["fingerprints_a"]) == len(summary["fingerprints_b"]) == 1
        assert summary["fingerprints_a"] != summary["fingerprints_b"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
