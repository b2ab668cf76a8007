"""Errors as real servers send them, through the CLI on both backends: what the server
said is stored and exported as it said it, and a bad key fails no run."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from runner.cli import main
from runner.db import engine as db
from tests.fakeserver import Received, Reply, fake_server
from tests.helpers import sql


def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args])
    return result.exit_code, result.stdout, result.stderr


def configure(tmp_path: Path, base_url: str, *, concurrency: int = 4) -> Path:
    (tmp_path / "runner.toml").write_text(
        f'[endpoints.llama]\ntype = "openai"\nbase_url = "{base_url}"\ntimeout = 10\n'
        f"[worker]\nconcurrency = {concurrency}\npoll_seconds = 0.02\nmax_attempts = 2\n"
        "backoff_base_seconds = 0.01\nbackoff_max_seconds = 0.02\n"
    )
    job = tmp_path / "j.yaml"
    job.write_text(
        "name: j\nmodel: m\nendpoint: llama\nseed: 1\n"
        "messages: [{role: user, content: 'Say {x}'}]\n"
        "vars: {x: [" + ", ".join(f"w{i}" for i in range(20)) + "]}\n"
    )
    return job


def test_what_a_server_said_is_stored_and_exported_as_it_said_it(
    db_url: str, tmp_path: Path
) -> None:
    """llama.cpp's and proxies' error bodies are not OpenAI-shaped: keep their words."""

    def script(req: Received, n: int) -> Reply:
        said = req.json["messages"][0]["content"]
        if said == "Say w0":  # FastAPI-style, as llama.cpp's server behind a proxy says it
            return Reply(422, {"detail": "Invalid value for seed"}, {"x-request-id": "req_a"})
        if said == "Say w1":  # not JSON at all
            return Reply(400, "<html><h1>400 Bad Request</h1></html>", {"x-request-id": "req_b"})
        return Reply(
            400,
            {"error": {"message": "n must be 1", "type": "invalid_request_error"}},
            {"x-request-id": "req_c"},
        )

    with fake_server(script) as server:
        job = configure(tmp_path, server.base_url)
        code, _, err = cli(db_url, "run", "--quiet", str(job))
    assert code == 1, err
    stored = sql(
        db_url,
        "SELECT j.key, r.state, r.error_status, r.error_type, r.error_message, r.error_body, "
        "a.outcome, a.provider_request_id, a.error_body FROM runs r "
        "JOIN jobs j ON j.id = r.job_id JOIN attempts a ON a.run_id = r.id "
        "WHERE j.key IN ('x=w0', 'x=w1', 'x=w2') ORDER BY j.key",
    )
    detail = '{"detail": "Invalid value for seed"}'
    html = "<html><h1>400 Bad Request</h1></html>"
    openai_body = '{"error": {"message": "n must be 1", "type": "invalid_request_error"}}'
    assert stored == [
        ("x=w0", "failed", 422, "http_422", "Invalid value for seed", detail, "failed", "req_a",
         detail),
        ("x=w1", "failed", 400, "http_400", html, html, "failed", "req_b", html),
        ("x=w2", "failed", 400, "invalid_request_error", "n must be 1", openai_body, "failed",
         "req_c", openai_body),
    ]  # fmt: skip

    out = tmp_path / "out.jsonl"
    code, _, err = cli(db_url, "export", "j", "--format", "openai-batch", "-o", str(out))
    assert code == 0, err
    lines = {line["custom_id"]: line for line in map(json.loads, out.read_text().splitlines())}
    assert lines["x=w0"]["response"] == {
        "status_code": 422,
        "request_id": "req_a",
        "body": {"detail": "Invalid value for seed"},
    }
    assert lines["x=w2"]["response"]["body"] == json.loads(openai_body)
    assert lines["x=w1"]["response"]["body"]["error"]["message"] == html


def test_a_bad_key_fails_no_run_even_with_requests_in_flight(db_url: str, tmp_path: Path) -> None:
    """Three 401s in a row give the endpoint up; the 401s of requests already in flight
    then release their runs instead of failing them (16 in flight, 20 jobs)."""
    denied = Reply(401, {"detail": "Invalid API key"}, {"x-request-id": "req_401"}, delay=0.3)
    with fake_server(lambda req, n: denied) as server:
        job = configure(tmp_path, server.base_url, concurrency=16)
        code, _, err = cli(db_url, "run", "--quiet", str(job))
    assert code == 1
    assert "HTTP 401 (Invalid API key)" in err and "check the endpoint's API key" in err
    assert sql(db_url, "SELECT state, count(*) FROM runs GROUP BY state") == [("queued", 20)]
    # Every 401 is in the log; those before the endpoint was given up count as a try.
    outcomes = dict(sql(db_url, "SELECT outcome, count(*) FROM attempts GROUP BY outcome"))
    assert sum(outcomes.values()) == len(server.received) >= 3
    assert set(outcomes) <= {"retry", "released"} and outcomes.get("retry", 0) <= 2
    charged = sql(db_url, "SELECT count(*) FROM runs WHERE attempts > 0")[0][0]
    assert charged == outcomes.get("retry", 0)
    assert sql(
        db_url, "SELECT DISTINCT http_status, error_message, provider_request_id FROM attempts"
    ) == [(401, "Invalid API key", "req_401")]


PLANTED = "sk-planted-0123456789abcdef"


def _dump(db_url: str) -> str:
    """Every row of every table, as text."""
    from sqlalchemy import MetaData

    engine = db.create_sync_engine(db_url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return "\n".join(
                repr(tuple(row))
                for table in meta.sorted_tables
                for row in conn.execute(table.select())
            )
    finally:
        engine.dispose()


def test_a_key_echoed_anywhere_by_a_server_is_stored_and_printed_nowhere(
    db_url: str, tmp_path: Path, monkeypatch: object
) -> None:
    """Servers echo the key in a code, a type, a header, a body or even a completion."""

    def echo(req: Received, n: int) -> Reply:
        key = req.headers["authorization"].removeprefix("Bearer ")
        said = req.json["messages"][0]["content"]
        header = {"x-request-id": f"req-{key}"}
        if said == "Say w0":
            return Reply(400, {"error": {"message": "bad", "code": key, "type": key}}, header)
        if said == "Say w1":
            return Reply(403, {"detail": f"key {key} is not allowed"}, header)
        if said == "Say w2":
            return Reply(200, f"not json {key}", header)  # not a completion: retried, fails
        content = {"role": "assistant", "content": f"your key is {key}"}
        return Reply(
            200,
            {"id": key, "object": "chat.completion", "model": "m", "system_fingerprint": key,
             "choices": [{"index": 0, "message": content, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
            header,
        )  # fmt: skip

    with fake_server(echo) as server:
        job = configure(tmp_path, server.base_url)
        toml = (tmp_path / "runner.toml").read_text()
        (tmp_path / "runner.toml").write_text(
            toml.replace("timeout = 10\n", 'timeout = 10\napi_key_env = "LLAMA_KEY"\n')
        )
        result = CliRunner().invoke(
            main, ["--db", db_url, "run", "--quiet", str(job)], env={"LLAMA_KEY": PLANTED}
        )
        assert result.exit_code == 1, result.output
        assert all(r.headers["authorization"] == f"Bearer {PLANTED}" for r in server.received)
    printed = [result.stdout, result.stderr]
    for args in (
        ["status", "j"],
        ["status", "j", "--format", "json"],
        ["show", "j", "x=w0"],
        ["show", "j", "x=w3"],
        ["show", "j", "x=w1", "--format", "json"],
    ):
        code, out, err = cli(db_url, *args)
        assert code == 0, err
        printed += [out, err]
    for fmt in ("openai-batch", "jsonl", "csv"):
        out = tmp_path / f"out.{fmt}"
        code, _, err = cli(db_url, "export", "j", "--format", fmt, "-o", str(out))
        assert code == 0, err
        printed.append(out.read_text())
    for text in printed:
        assert PLANTED not in text
    dump = _dump(db_url)
    assert PLANTED not in dump
    assert "your key is ***" in dump and "key *** is not allowed" in dump and "req-***" in dump
