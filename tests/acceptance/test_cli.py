"""The real ``runner`` binary in a subprocess, as a user drives it."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openai

from tests.fakeserver import Reply, completion, fake_server
from tests.helpers import SUCCESS_ATTEMPTS_MISMATCH, in_process

ROOT = Path(__file__).resolve().parents[2]
RUNNER = [sys.executable, "-m", "runner"]


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNNER, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_quickstart_runs_offline_and_stores_everything(tmp_path: Path) -> None:
    result = run("run", str(ROOT / "jobs" / "quickstart.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "6/6 done: 6 succeeded" in result.stdout
    runs = query(
        tmp_path / "runner.db",
        "SELECT r.state, j.seed, r.output, r.prompt_tokens, r.completion_tokens, "
        "r.total_tokens, r.system_fingerprint FROM runs r JOIN jobs j ON j.id = r.job_id",
    )
    assert len(runs) == 6
    for state, seed, output, prompt, completion_, total, fingerprint in runs:
        assert state == "succeeded" and seed in (1, 2) and output
        assert prompt > 0 and completion_ > 0 and total == prompt + completion_
        assert fingerprint.startswith("fp_")
    shown = in_process("show", "quickstart", "topic=ocean tides/seed=1", cwd=tmp_path)
    assert shown.returncode == 0 and "state: succeeded" in shown.stdout
    assert "seed: 1" in shown.stdout and "--- output ---" in shown.stdout


def test_broken_job_file_exits_non_zero_names_file_and_line_and_adds_no_batch(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel: m\nmessages:\n  - role: user\n    content: hi {who}\n")
    result = run("run", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {bad}:5: messages[0].content: placeholder {{who}} has no variable; defined: none"
    )
    assert "Traceback" not in result.stderr
    assert query(tmp_path / "runner.db", "SELECT count(*) FROM batches") == [(0,)]


def test_python_dash_m_and_help_show_env_vars(tmp_path: Path) -> None:
    result = run("work", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "RUNNER_WORK_CONCURRENCY" in result.stdout and "--burst" in result.stdout
    top = in_process("--help", cwd=tmp_path)
    assert "RUNNER_DATABASE_URL" in top.stdout


def test_sigterm_stops_gracefully_and_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    slow = lambda req, n: Reply(body=completion(req.json), delay=0.5)  # noqa: E731
    with fake_server(slow) as server:
        (tmp_path / "runner.toml").write_text(
            f'[endpoints.fake]\ntype = "openai"\nbase_url = "{server.base_url}"\n'
            "[worker]\npoll_seconds = 0.05\ngrace_seconds = 30\n"
        )
        job = tmp_path / "j.yaml"
        job.write_text(
            "model: m\nendpoint: fake\nmessages: [{role: user, content: '{x}'}]\n"
            "vars: {x: [" + ", ".join(str(i) for i in range(40)) + "]}\n"
        )
        assert in_process("submit", str(job), cwd=tmp_path).returncode == 0
        env = {**os.environ, "RUNNER_WORK_CONCURRENCY": "4"}
        proc = subprocess.Popen(
            [*RUNNER, "--log-level", "info", "work"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while len(server.received) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "SIGTERM: finishing in-flight requests" in err
        states = dict(
            query(tmp_path / "runner.db", "SELECT state, count(*) FROM runs GROUP BY state")
        )
        assert states.get("succeeded", 0) >= 4 and "running" not in states
        assert sum(states.values()) == 40

        # Second run: two signals; the in-flight requests are released, not waited for.
        proc = subprocess.Popen(
            [*RUNNER, "work"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        before = len(server.received)
        while len(server.received) < before + 4 and time.monotonic() < deadline + 30:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "released" in out
        rows = query(tmp_path / "runner.db", "SELECT state, attempts, lease_owner FROM runs")
        assert not [r for r in rows if r[0] == "running"]
        assert all(
            attempts == 0 and owner is None for state, attempts, owner in rows if state == "queued"
        )
        assert query(tmp_path / "runner.db", SUCCESS_ATTEMPTS_MISMATCH) == []


def test_postgres_needs_db_upgrade_then_runs(tmp_path: Path, empty_db_url: str) -> None:
    job = str(ROOT / "jobs" / "quickstart.yaml")
    if empty_db_url.startswith("postgresql"):
        refused = in_process("--db", empty_db_url, "run", job, cwd=tmp_path)
        assert refused.returncode == 1
        assert "run `runner db upgrade` first" in refused.stderr
        upgraded = in_process(
            "db", "upgrade", cwd=tmp_path, env={"RUNNER_DATABASE_URL": empty_db_url}
        )
        assert upgraded.returncode == 0 and "schema upgraded from empty to" in upgraded.stdout
    first = run("--db", empty_db_url, "run", job, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    status = in_process("--db", empty_db_url, "status", "quickstart", cwd=tmp_path)
    assert "6/6 done: 6 succeeded" in status.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_answers_any_openai_client_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*RUNNER, "serve", "--port", str(port), "--variant", "v2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        deadline = time.monotonic() + 30
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "runner serve did not start"
                time.sleep(0.1)
        assert [m.id for m in models.data] == ["seed-runner-local"]
        body = {"messages": [{"role": "user", "content": "Tell me about Mars."}], "seed": 3}
        first = client.chat.completions.create(model="any", **body)
        again = client.chat.completions.create(model="any", **body)
        assert first.choices[0].message.content == again.choices[0].message.content
        assert first.model == "any" and first.system_fingerprint.startswith("fp_")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"at http://127.0.0.1:{port}/v1" in err


def test_serve_simulates_a_nondeterministic_server_with_rotating_fingerprints(
    tmp_path: Path,
) -> None:
    """Flags and RUNNER_SERVE_* variables set the noise; a seeded server repeats it, so the
    in-process model with the same settings gives the same texts and fingerprints."""
    from runner.localmodel.service import LocalModelService

    port = free_port()
    fingerprints = ("fp_a1", "fp_b2", "fp_c3")
    proc = subprocess.Popen(
        [*RUNNER, "serve", "--port", str(port), "--nondeterminism", "0.5", "--noise-seed", "3"],
        cwd=tmp_path,
        env={**os.environ, "RUNNER_SERVE_FINGERPRINTS": ",".join(fingerprints)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Tell me about Mars."}],
        "seed": 3,
        "temperature": 0.7,
        "max_tokens": 60,
    }
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "runner serve did not start"
                time.sleep(0.1)
        served = [client.chat.completions.create(**body) for _ in range(20)]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "fp_a1, fp_b2, fp_c3, nondeterminism 0.5" in err
    got = [(c.choices[0].message.content, c.system_fingerprint) for c in served]
    twin = LocalModelService(nondeterminism=0.5, fingerprints=fingerprints, noise_seed=3)
    expected = [twin.complete(body) for _ in range(20)]
    assert got == [
        (e["choices"][0]["message"]["content"], e["system_fingerprint"]) for e in expected
    ]
    (deterministic,) = [
        c["message"]["content"] for c in LocalModelService().complete(body)["choices"]
    ]
    texts = [text or "" for text, _ in got]
    kept = [text for text in texts if text == deterministic]
    assert 0 < len(kept) < 20  # a mix: some seeded requests left their path, some did not
    first_word = deterministic.split(" ")[0]
    assert all(text.startswith(first_word) for text in texts)
    assert {fp for _, fp in got} == set(fingerprints)


def test_serve_rejects_bad_flags(tmp_path: Path) -> None:
    result = run("serve", "--latency-ms", "fast", cwd=tmp_path)
    assert result.returncode == 2 and "latency" in result.stderr


def test_a_worker_that_shows_as_registered_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    # Operators and scripts take a row in `workers` as "up": from then on SIGTERM must be
    # a graceful stop (exit 0), never the default kill of a process without its handler.
    (tmp_path / "runner.toml").write_text("[worker]\npoll_seconds = 0.05\n")
    assert in_process("db", "upgrade", cwd=tmp_path).returncode == 0
    for _ in range(3):
        proc = subprocess.Popen(
            [*RUNNER, "work", "--quiet"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if query(tmp_path / "runner.db", "SELECT count(*) FROM workers")[0][0]:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert query(tmp_path / "runner.db", "SELECT count(*) FROM workers") == [(0,)]
