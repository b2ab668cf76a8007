"""Retries, faults, rate limits and bad keys, against real HTTP servers, on both backends."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import EndpointConfig, Settings, WorkerConfig, load_settings
from runner.localmodel.server import ServerOptions, running_server
from runner.submit import submit
from runner.work import Worker
from tests.fakeserver import Reply, fake_server
from tests.helpers import rows

pytestmark = pytest.mark.anyio


def with_endpoint(db_url: str, base_url: str, **worker: float) -> Settings:
    base = load_settings(database_url=db_url)
    serve = EndpointConfig(name="serve", type="openai", base_url=base_url, timeout=1.0)
    config = WorkerConfig(poll_seconds=0.02, backoff_base_seconds=0.05, backoff_max_seconds=0.5)
    return replace(
        base, endpoints={**base.endpoints, "serve": serve}, worker=replace(config, **worker)
    )


def job_lines(tmp_path: Path, count: int, bad: int = 0) -> Path:
    """A Batch file of ``count`` seeded requests; the first ``bad`` ones the model rejects."""
    lines = []
    for i in range(count):
        body = {
            "model": "m",
            "seed": i,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": f"Tell me about tides {i}"}],
        }
        if i < bad:
            body["logit_bias"] = {"1234": 5}  # the local model refuses biases: HTTP 400
        lines.append(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_fault_mix_ends_in_success_or_stored_permanent_errors_and_honours_retry_after(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    options = ServerOptions(port=0, fail_rate=0.2, hang_s=3.0, seed=7, log_level="warning")
    with running_server(options) as url:
        settings = with_endpoint(db_url, url, concurrency=16, max_attempts=12)
        sub = await submit(engine, job_lines(tmp_path, 150, bad=3), settings, endpoint="serve")
        with anyio.fail_after(90):
            await Worker(engine, settings, burst=True, round_ids=[sub.round_id]).run()
    states = dict(
        (r.state, r.n)
        for r in await rows(engine, "SELECT state, count(*) n FROM runs GROUP BY state")
    )
    assert states == {"succeeded": 147, "failed": 3}
    failed = await rows(
        engine,
        "SELECT r.id, r.error_status, r.error_type, r.error_message, r.attempts FROM runs r "
        "WHERE r.state = 'failed'",
    )
    for run in failed:
        assert (run.error_status, run.error_type) == (400, "unsupported_parameter")
        assert "logit_bias" in run.error_message
        # A fault may have hit an earlier try; the 400 ended the run at once, untried again.
        tries = await rows(
            engine,
            "SELECT number, http_status, outcome FROM attempts WHERE run_id = :r ORDER BY number",
            r=run.id,
        )
        assert tuple(tries[-1]) == (run.attempts, 400, "failed")
        assert [t.http_status for t in tries].count(400) == 1
    kinds = {
        (r.http_status, r.error_type)
        for r in await rows(
            engine, "SELECT http_status, error_type FROM attempts WHERE outcome = 'retry'"
        )
    }
    # Every fault of the mix happened and was retried.
    assert {
        (429, "rate_limit_exceeded"),
        (500, "server_error"),
        (503, "server_error"),
        (None, "timeout"),
        (None, "connection_error"),
    } <= kinds
    # Retry-After honoured: a 429's run was not tried again before the server said.
    pairs = await rows(
        engine,
        "SELECT a.retry_after_ms, a.retry_at, a.started_at AS t0, a.latency_ms, "
        "b.started_at AS t1 FROM attempts a JOIN attempts b "
        "ON b.run_id = a.run_id AND b.number = a.number + 1 WHERE a.http_status = 429",
    )
    assert pairs
    for pair in pairs:
        t0, t1, retry_at = (pair.t0, pair.t1, pair.retry_at)
        if isinstance(t0, str):  # SQLite returns text from a raw query
            from datetime import datetime

            t0, t1, retry_at = (datetime.fromisoformat(v) for v in (t0, t1, retry_at))
        waited_ms = (t1 - t0).total_seconds() * 1000 - pair.latency_ms
        assert pair.retry_after_ms >= 100
        assert waited_ms >= pair.retry_after_ms - 5  # clock rounding
        assert t1 >= retry_at


async def test_repeated_401s_stop_the_worker_claiming_for_that_endpoint(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    denied = Reply(
        401,
        {
            "error": {
                "message": "Incorrect API key provided: sk-...abcd",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
    )
    with fake_server(lambda req, n: denied) as server:
        settings = with_endpoint(db_url, server.base_url, concurrency=2)
        sub = await submit(engine, job_lines(tmp_path, 40), settings, endpoint="serve")
        with anyio.fail_after(30):
            stats = await Worker(engine, settings, burst=True, round_ids=[sub.round_id]).run()
    assert len(server.received) <= 4  # 3 refusals, plus at most one already in flight
    assert "401" in stats.disabled_endpoints["serve"]
    states = dict(
        (r.state, r.n)
        for r in await rows(engine, "SELECT state, count(*) n FROM runs GROUP BY state")
    )
    # A bad key fails no run: the first 401s are retried, the rest released.
    assert states == {"queued": 40}
    outcomes = await rows(
        engine, "SELECT outcome, count(*) n FROM attempts GROUP BY outcome ORDER BY outcome"
    )
    assert sum(r.n for r in outcomes) == len(server.received)
    assert {r.outcome for r in outcomes} <= {"released", "retry"}
    # The runs it gave up on were released, not charged an attempt.
    assert (
        await rows(
            engine,
            "SELECT r.id FROM runs r WHERE r.attempts > 0 AND NOT EXISTS "
            "(SELECT 1 FROM attempts a WHERE a.run_id = r.id AND a.outcome = 'retry')",
        )
        == []
    )


async def test_rate_limit_headers_teach_the_worker_and_429_pauses_the_endpoint(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    # A server whose limit (40 requests/min, a 40-request bucket) the worker is not told.
    options = ServerOptions(port=0, rpm=40, log_level="warning")
    with running_server(options) as url:
        settings = with_endpoint(db_url, url, concurrency=8)
        sub = await submit(engine, job_lines(tmp_path, 44), settings, endpoint="serve")
        worker = Worker(engine, settings, round_ids=[sub.round_id])
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(30):
                while worker.stats.succeeded < 42:  # noqa: ASYNC110 - polling a counter
                    await anyio.sleep(0.05)
            worker.request_stop()
    (limiter,) = worker.limits.all()
    assert limiter.limit("requests") == 40  # learned from x-ratelimit-limit-requests
    # The bucket was full after 40; at most a handful of requests saw a 429 before the
    # worker paused the endpoint and followed the server's refill rate.
    assert worker.stats.rate_limited <= 3
    assert worker.stats.succeeded >= 42
