"""The HTTP server's own behaviour: rate limits, latency, faults, variant, run_server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import openai
import pytest

from runner.localmodel.server import ServerOptions, parse_latency, running_server
from runner.localmodel.service import LocalModelService

pytestmark = pytest.mark.anyio

ClientFactory = Callable[..., openai.AsyncOpenAI]
MESSAGES = [{"role": "user", "content": "news about Mars"}]
LIMIT_HEADERS = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
]


def options(**overrides: Any) -> ServerOptions:
    return ServerOptions(**{"port": 0, "log_level": "warning", **overrides})


async def test_429_on_requests_per_minute_with_headers(
    service: LocalModelService, make_http_client: ClientFactory
) -> None:
    with running_server(options(rpm=2, tpm=100_000), service) as url:
        async with make_http_client(url) as client:
            ok = await client.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES, max_tokens=5
            )
            assert all(name in ok.headers for name in LIMIT_HEADERS)
            assert ok.headers["x-ratelimit-limit-requests"] == "2"
            assert ok.headers["x-ratelimit-remaining-requests"] == "1"
            await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
            # non-model routes are not charged but still report the limits
            models = await client.models.with_raw_response.list()
            assert models.headers["x-ratelimit-remaining-requests"] == "0"
    error = caught.value
    assert error.status_code == 429
    assert error.type == "requests"
    assert error.code == "rate_limit_exceeded"
    headers = error.response.headers
    assert all(name in headers for name in LIMIT_HEADERS)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 25 <= int(headers["retry-after"]) <= 30  # one request refills in 60 s / 2
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "Limit 2" in error.message


async def test_429_on_tokens_per_minute(
    service: LocalModelService, make_http_client: ClientFactory
) -> None:
    with running_server(options(tpm=120), service) as url:
        async with make_http_client(url) as client:
            ok = await client.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES, max_tokens=80
            )
            usage = ok.parse().usage
            assert usage is not None
            charged = usage.prompt_tokens + 80
            assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 120 - charged
            assert "x-ratelimit-limit-requests" not in ok.headers  # no rpm configured
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=80)
            with pytest.raises(openai.RateLimitError) as too_large:
                await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=500)
    assert caught.value.type == "tokens"
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "120"
    assert too_large.value.response.headers["x-should-retry"] == "false"
    assert "too large" in too_large.value.message


async def test_tokens_refill_over_time(
    service: LocalModelService, make_http_client: ClientFactory
) -> None:
    # 6000 rpm refills one request every 10 ms
    with running_server(options(rpm=6000), service) as url:
        async with make_http_client(url) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES, max_tokens=1
            )
            assert int(raw.headers["x-ratelimit-remaining-requests"]) == 5999
            await anyio.sleep(0.05)
            raw = await client.models.with_raw_response.list()
            assert int(raw.headers["x-ratelimit-remaining-requests"]) == 6000


async def test_fixed_and_ranged_latency(
    service: LocalModelService, make_http_client: ClientFactory
) -> None:
    for latency, low, high in (("150", 0.15, 1.0), ("50-90", 0.05, 1.0)):
        with running_server(options(latency_ms=latency), service) as url:
            async with make_http_client(url) as client:
                for _ in range(3):
                    started = time.perf_counter()
                    await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
                    assert low <= time.perf_counter() - started < high


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("500", openai.InternalServerError, 500),
        ("503", openai.InternalServerError, 503),
        ("timeout", openai.APITimeoutError, None),
        ("drop", openai.APIConnectionError, None),
    ],
)
async def test_each_fault_kind(
    service: LocalModelService,
    make_http_client: ClientFactory,
    kind: str,
    error: type[Exception],
    status: int | None,
) -> None:
    with running_server(
        options(fail_rate=1.0, faults=(kind,), hang_s=5.0, rpm=100), service
    ) as url:
        async with make_http_client(url, timeout=0.3) as client:
            started = time.perf_counter()
            with pytest.raises(error) as caught:
                await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
            elapsed = time.perf_counter() - started
    if status is not None:
        assert isinstance(caught.value, openai.APIStatusError)
        assert caught.value.status_code == status
        assert caught.value.type == "server_error"
        assert "x-ratelimit-remaining-requests" in caught.value.response.headers
    if kind == "timeout":
        assert 0.3 <= elapsed < 2.0
    if kind == "drop":
        assert not isinstance(caught.value, openai.APITimeoutError)
        assert elapsed < 0.3


async def _outcomes(url: str, make_http_client: ClientFactory) -> list[str]:
    outcomes = []
    async with make_http_client(url, timeout=0.3) as client:
        for _ in range(16):
            try:
                await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
                outcomes.append("ok")
            except openai.APIStatusError as exc:
                outcomes.append(str(exc.status_code))
            except openai.APIConnectionError as exc:
                outcomes.append(type(exc).__name__)
    return outcomes


async def test_fail_rate_mixes_faults_and_repeats_with_the_seed(
    service: LocalModelService, make_http_client: ClientFactory
) -> None:
    settings = options(fail_rate=0.5, faults=("500", "503", "drop"), seed=11)
    runs = []
    for _ in range(2):
        with running_server(settings, service) as url:
            runs.append(await _outcomes(url, make_http_client))
    assert runs[0] == runs[1]
    assert {"ok", "500", "503", "APIConnectionError"} <= set(runs[0])
    with running_server(
        options(fail_rate=0.5, faults=("500", "503", "drop"), seed=12), service
    ) as url:
        assert await _outcomes(url, make_http_client) != runs[0]


async def test_variant_server_answers_with_another_model(
    service: LocalModelService, make_http_client: ClientFactory
) -> None:
    with running_server(options(variant="backend-2")) as url:
        async with make_http_client(url) as client:
            completion = await client.chat.completions.create(
                model="m", messages=MESSAGES, seed=1, temperature=0, max_tokens=60
            )
    assert completion.system_fingerprint == LocalModelService("backend-2").system_fingerprint
    assert completion.system_fingerprint != service.system_fingerprint


def test_options_validation() -> None:
    assert parse_latency("50-200") == (50.0, 200.0)
    assert parse_latency(75) == (75.0, 75.0)
    assert ServerOptions(latency_ms="10-20").latency_range == (10.0, 20.0)
    for bad in ("fast", "200-50", "-5", "1-2-3"):
        with pytest.raises(ValueError, match="latency"):
            parse_latency(bad)
    for field, value in (
        ("rpm", 0),
        ("tpm", -1),
        ("fail_rate", 1.5),
        ("faults", ("boom",)),
        ("port", 70000),
    ):
        with pytest.raises(ValueError, match=field):
            ServerOptions(**{field: value})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_run_server_serves_until_interrupted() -> None:
    port = _free_port()
    code = (
        "from runner.localmodel.server import ServerOptions, run_server; "
        f"run_server(ServerOptions(port={port}, log_level='warning', rpm=60))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx2.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "60"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert f"127.0.0.1:{port}/v1" in stderr and "fp_" in stderr


async def test_429_fault_is_a_rate_limit_with_retry_after(
    service: LocalModelService, make_http_client: ClientFactory
) -> None:
    with running_server(options(fail_rate=1.0, faults=("429",), rpm=1000), service) as url:
        async with make_http_client(url, timeout=2) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert 100 <= int(headers["retry-after-ms"]) <= 1000
    assert headers["retry-after"] == "1"
    assert headers["x-ratelimit-limit-requests"] == "1000"
