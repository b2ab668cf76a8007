"""`runner serve` streams chat completions and responses to the stock openai SDK."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from runner.localmodel.server import ServerOptions, running_server
from runner.localmodel.service import LocalModelService

pytestmark = pytest.mark.anyio

MARS = "Generate a short excerpt of news about a journey to Mars."


async def test_chat_stream_gives_the_seeded_text_and_usage(
    server_url: str, make_http_client: Callable[..., openai.AsyncOpenAI]
) -> None:
    async with make_http_client(server_url) as client:
        whole = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": MARS}], seed=9, max_tokens=30
        )
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": MARS}],
            seed=9,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, reasons, usage = [], [], None
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                reasons.append(choice.finish_reason)
            usage = chunk.usage or usage
    assert len(pieces) > 3  # token by token, not one piece
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons[-1] == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


async def test_responses_stream_events_and_final_response(
    server_url: str, make_http_client: Callable[..., openai.AsyncOpenAI]
) -> None:
    async with make_http_client(server_url) as client:
        stream = await client.responses.create(
            model="m", input=MARS, temperature=0, max_output_tokens=16, stream=True
        )
        kinds, deltas, final = [], [], None
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
        # The SDK's own helper accumulates the events of a completed response (a short
        # structured one: it ends well within the limit).
        schema = {"type": "object", "properties": {"headline": {"type": "string"}}}
        fmt = {"type": "json_schema", "name": "news", "schema": schema}
        async with client.responses.stream(
            model="m",
            input=MARS,
            text={"format": fmt},  # type: ignore[typeddict-item]
        ) as helper:
            async for _ in helper:
                pass
            helped = await helper.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete"  # cut by max_output_tokens, said so
    assert final is not None and final.status == "incomplete"
    assert "".join(deltas) == final.output_text
    assert helped.status == "completed" and helped.output_text.startswith('{"headline": "')


async def test_a_refused_streamed_request_is_a_json_error(
    server_url: str, make_http_client: Callable[..., openai.AsyncOpenAI]
) -> None:
    async with make_http_client(server_url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": MARS}], temperature=5,
                stream=True,
            )  # fmt: skip
    assert caught.value.status_code == 400


def test_in_process_the_service_still_refuses_stream(service: LocalModelService) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
    assert service.handle("POST", "/v1/chat/completions", body).status == 400


async def test_a_streamed_request_is_charged_its_tokens(
    service: LocalModelService, make_http_client: Callable[..., openai.AsyncOpenAI]
) -> None:
    options = ServerOptions(port=0, log_level="warning", tpm=100)
    with running_server(options, service) as url:
        async with make_http_client(url) as client:
            with pytest.raises(openai.RateLimitError, match="Request too large"):
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": MARS}], max_tokens=500,
                    stream=True,
                )  # fmt: skip
