"""RunnerOpenAI builds exactly the requests the stock openai SDK builds, only once per shape.

Builds requests with the installed SDK both ways (no network), then sends through both
to a server on 127.0.0.1 and compares what it received.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest
from openai._models import FinalRequestOptions

from runner.config import EndpointConfig
from runner.endpoints.client import EndpointClient
from runner.endpoints.sdk import REVIEWED_OPTION_FIELDS, RunnerOpenAI
from tests.fakeserver import fake_server

SETTINGS: dict[str, Any] = {
    "api_key": "sk-test-0123456789",
    "base_url": "http://127.0.0.1:9/v1",
    "max_retries": 0,
    "timeout": 12.5,
}


def _options(body: bytes, **extra: Any) -> FinalRequestOptions:
    return FinalRequestOptions.construct(
        method="post", url="/chat/completions", content=body, **extra
    )


def _shape(request: httpx2.Request) -> tuple[Any, ...]:
    return (
        request.method,
        str(request.url),
        request.headers.raw,  # names, values and order
        request.read(),
        request.extensions,
    )


def test_every_option_field_of_the_installed_sdk_has_been_reviewed() -> None:
    # A new field could change the built request; the template must not ignore it.
    assert set(FinalRequestOptions.model_fields) == REVIEWED_OPTION_FIELDS


def test_templated_requests_equal_the_sdks_own() -> None:
    ours, stock = RunnerOpenAI(**SETTINGS), openai.AsyncOpenAI(**SETTINGS)
    bodies = [b'{"model":"m","seed":1}', b'{"model":"m","seed":22,"messages":[]}', b"{}"]
    for retries in (0, 2, 0):  # the retry count is a header: one template per count
        for body in bodies:
            built = ours._build_request(_options(body), retries_taken=retries)
            expected = stock._build_request(_options(body), retries_taken=retries)
            assert _shape(built) == _shape(expected)
            assert built.headers["content-length"] == str(len(body))
    assert len(ours._templates) == 2  # the later bodies came from the templates


def test_a_changed_request_shape_gets_its_own_template_or_the_sdks_path() -> None:
    ours, stock = RunnerOpenAI(**SETTINGS), openai.AsyncOpenAI(**SETTINGS)
    ours._build_request(_options(b"{}"))
    cases = [
        _options(b"{}", headers={"X-Extra": "1"}),
        _options(b"{}", params={"api-version": "2"}),
        _options(b"{}", timeout=3.0),
        FinalRequestOptions.construct(method="post", url="/chat/completions", json_data={"a": 1}),
        FinalRequestOptions.construct(method="post", url="/embeddings", content=b"{}"),
    ]
    for options in cases:
        again = options.model_copy()
        assert _shape(ours._build_request(options)) == _shape(stock._build_request(again))
    # Only the plain path shapes are templated: /chat/completions and /embeddings.
    assert {key[1] for key in ours._templates} == {"/chat/completions", "/embeddings"}


def test_an_idempotency_header_is_never_reused_from_a_template() -> None:
    ours = RunnerOpenAI(**SETTINGS)
    ours._idempotency_header = "Idempotency-Key"
    first = ours._build_request(_options(b"{}", idempotency_key="a"))
    second = ours._build_request(_options(b"{}", idempotency_key="b"))
    assert (first.headers["idempotency-key"], second.headers["idempotency-key"]) == ("a", "b")
    assert not ours._templates


@pytest.mark.anyio
async def test_the_server_receives_the_same_bytes_as_from_the_stock_sdk() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 7})
    with fake_server() as server:
        config = EndpointConfig(
            name="fake", type="openai", base_url=server.base_url, api_key_env="K", timeout=5
        )
        client = EndpointClient(config, env={"K": SETTINGS["api_key"]})
        for _ in range(3):
            await client.chat(body)
        await client.aclose()
        stock = openai.AsyncOpenAI(
            api_key=SETTINGS["api_key"], base_url=server.base_url, max_retries=0, timeout=5,
            http_client=openai.DefaultAioHttpClient(timeout=5),
        )  # fmt: skip
        await stock.post("/chat/completions", content=body.encode(), cast_to=httpx2.Response)
        await stock.close()
    *ours, theirs = server.received
    for received in ours:
        assert (received.path, received.body) == (theirs.path, theirs.body)
        assert received.headers == theirs.headers
