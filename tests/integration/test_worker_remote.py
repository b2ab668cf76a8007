"""The worker against an OpenAI-compatible HTTP server, on both backends.

Checks the exact JSON our client sends (seed included), what is stored from the
response, retries and their attempts, permanent failures, and that the API key
never reaches the database.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import EndpointConfig, Settings, WorkerConfig, load_settings
from runner.submit import submit
from runner.work import Worker
from tests.fakeserver import FakeServer, Received, Reply, completion, fake_server
from tests.helpers import rows, wait_for, yaml_job

pytestmark = pytest.mark.anyio
SECRET = "sk-test-PLANTED-KEY-0123456789"
FAST = WorkerConfig(
    concurrency=8, poll_seconds=0.02, heartbeat_seconds=0.2, lease_seconds=5,
    backoff_base_seconds=0.01, backoff_max_seconds=0.05, max_attempts=3, grace_seconds=5,
)  # fmt: skip


def settings_for(server: FakeServer, db_url: str, **worker: float) -> Settings:
    base = load_settings(database_url=db_url)
    fake = EndpointConfig(
        name="fake", type="openai", base_url=server.base_url, api_key_env="FAKE_API_KEY",
        timeout=2,
    )  # fmt: skip
    return replace(base, endpoints={**base.endpoints, "fake": fake},
                   worker=replace(FAST, **worker))  # fmt: skip


async def run_batch(engine: AsyncEngine, settings: Settings, path: Path) -> None:
    sub = await submit(engine, path, settings, endpoint="fake")
    with anyio.fail_after(30):
        await Worker(engine, settings, burst=True, round_ids=[sub.round_id]).run()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_API_KEY", SECRET)


async def test_sends_the_stored_body_exactly_and_stores_the_response(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    with fake_server() as server:
        settings = settings_for(server, db_url)
        await run_batch(engine, settings, yaml_job(tmp_path, 4))
    assert len(server.received) == 4
    jobs = {r.body: r.key for r in await rows(engine, "SELECT body, key FROM jobs")}
    for request in server.received:
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        assert request.json["seed"] == 42
        assert request.headers["content-type"] == "application/json"
        # What the server got is the stored canonical body, byte for byte.
        assert request.body.decode() in jobs
    stored = await rows(
        engine,
        "SELECT state, attempts, output, outputs, finish_reason, response_model, "
        "system_fingerprint, provider_request_id, prompt_tokens, completion_tokens, "
        "total_tokens, latency_ms, response, started_at, finished_at FROM runs",
    )
    for run in stored:
        assert run.state == "succeeded" and run.attempts == 1
        assert run.output.startswith("echo: Tell me about topic") and "(seed 42)" in run.output
        assert json.loads(run.outputs) == [run.output]
        assert run.finish_reason == "stop" and run.response_model == "test-model-2024-01-01"
        assert run.system_fingerprint is None  # real servers may return null
        assert run.provider_request_id.startswith("req_")
        assert (run.prompt_tokens, run.completion_tokens, run.total_tokens) == (7, 5, 12)
        assert run.latency_ms > 0 and run.finished_at >= run.started_at
        assert json.loads(run.response)["id"] == "chatcmpl-fake"


async def test_retryable_errors_are_retried_with_each_try_recorded(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    def script(request: Received, count: int) -> Reply:
        if count == 1:
            return Reply(503, {"error": {"message": "overloaded", "type": "server_error"}})
        if count == 2:
            return Reply(429, {"error": {"message": "slow down", "type": "requests",
                                         "code": "rate_limit_exceeded"}},
                         headers={"retry-after-ms": "50"})  # fmt: skip
        if count == 3:
            return Reply(200, "this is not json")
        return Reply(body=completion(request.json, fingerprint="fp_abc"))

    with fake_server(script) as server:
        await run_batch(engine, settings_for(server, db_url, max_attempts=4), yaml_job(tmp_path, 1))
    (run,) = await rows(engine, "SELECT id, state, attempts, system_fingerprint FROM runs")
    assert (run.state, run.attempts, run.system_fingerprint) == ("succeeded", 4, "fp_abc")
    attempts = await rows(
        engine, "SELECT number, outcome, http_status, error_type FROM attempts ORDER BY number"
    )
    assert [tuple(a) for a in attempts] == [
        (1, "retry", 503, "server_error"),
        (2, "retry", 429, "rate_limit_exceeded"),
        (3, "retry", 200, "invalid_response"),
        (4, "succeeded", 200, None),
    ]


async def test_permanent_errors_fail_at_once_and_exhausted_retries_say_so(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    def script(request: Received, count: int) -> Reply:
        if "topic0" in request.json["messages"][0]["content"]:
            return Reply(400, {"error": {"message": "Invalid value for 'temperature'",
                                         "type": "invalid_request_error",
                                         "param": "temperature", "code": None}})  # fmt: skip
        return Reply(500, {"error": {"message": "boom", "type": "server_error"}})

    with fake_server(script) as server:
        await run_batch(engine, settings_for(server, db_url, max_attempts=2), yaml_job(tmp_path, 2))
    runs = await rows(
        engine,
        "SELECT j.key, r.state, r.attempts, r.error_status, r.error_type, r.error_message "
        "FROM runs r JOIN jobs j ON j.id = r.job_id ORDER BY j.key",
    )
    assert [tuple(r)[:5] for r in runs] == [
        ("topic=topic0", "failed", 1, 400, "invalid_request_error"),
        ("topic=topic1", "failed", 2, 500, "server_error"),
    ]
    assert "Invalid value for 'temperature'" in runs[0].error_message
    assert "gave up after 2 attempts" in runs[1].error_message


async def test_api_key_is_never_stored_even_when_the_server_echoes_it(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    def script(request: Received, count: int) -> Reply:
        return Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}",
                                     "type": "invalid_request_error",
                                     "code": "invalid_api_key"}})  # fmt: skip

    with fake_server(script) as server:
        await run_batch(engine, settings_for(server, db_url), yaml_job(tmp_path, 1))
    (run,) = await rows(engine, "SELECT state, error_message, error_body FROM runs")
    # A bad key fails no run: it goes back to the queue once the endpoint is given up.
    assert run.state == "queued" and "Incorrect API key provided: ***" in run.error_message
    assert "Incorrect API key provided: ***" in run.error_body
    for table in ("batches", "jobs", "rounds", "runs", "attempts"):
        for row in await rows(engine, f"SELECT * FROM {table}"):
            assert SECRET not in repr(tuple(row))


async def test_graceful_stop_finishes_in_flight_and_releases_nothing_else(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    with fake_server(lambda req, n: Reply(body=completion(req.json), delay=0.3)) as server:
        settings = settings_for(server, db_url, concurrency=2)
        await submit(engine, yaml_job(tmp_path, 6), settings, endpoint="fake")
        worker = Worker(engine, settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await wait_for(lambda: len(server.received) >= 2)
            worker.request_stop()
    states = sorted(tuple(r) for r in await rows(engine, "SELECT state, attempts FROM runs"))
    assert states == [("queued", 0)] * 4 + [("succeeded", 1)] * 2


async def test_stop_with_no_grace_releases_in_flight_runs_uncounted(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    with fake_server(lambda req, n: Reply(body=completion(req.json), delay=1.0)) as server:
        settings = settings_for(server, db_url, concurrency=3, grace_seconds=0.01)
        await submit(engine, yaml_job(tmp_path, 3), settings, endpoint="fake")
        worker = Worker(engine, settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await wait_for(lambda: len(server.received) >= 3)
            worker.request_stop()
    assert worker.stats.released == 3
    states = [tuple(r) for r in await rows(engine, "SELECT state, attempts, lease_owner FROM runs")]
    assert states == [("queued", 0, None)] * 3
    assert await rows(engine, "SELECT * FROM attempts") == []
