"""Streaming (``stream: true``) for `runner serve`: server-sent events of a whole reply.

Any OpenAI client may ask for a stream, so `runner serve` answers chat completions and
responses with one. The reply is drawn whole by :class:`LocalModelService` (the same
text as without ``stream``, seeds and all), then cut into events the way OpenAI sends
them: for chat, ``chat.completion.chunk`` objects (the role, a content delta per token,
the finish reason, a usage chunk when ``stream_options.include_usage``) and
``data: [DONE]``; for responses, typed events from ``response.created`` through the
``output_text`` deltas to ``response.completed`` (or ``response.incomplete``) with the
whole response. A request the service refuses gets its JSON error, not a stream, as
OpenAI's API does. The in-process transport does not stream: the runner stores whole
responses, and so never asks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from runner.localmodel.service import LocalModelService, LocalResponse, route_of
from runner.localmodel.tokenizer import tokenize

__all__ = ["STREAMED_ROUTES", "stream", "wants_stream"]

STREAMED_ROUTES = ("/chat/completions", "/responses")


def wants_stream(method: str, path: str, body: bytes) -> dict[str, Any] | None:
    """The decoded body of a POST that asks for a stream on a streamed route, else None."""
    if method.upper() != "POST" or route_of(path) not in STREAMED_ROUTES:
        return None
    if b'"stream"' not in body:
        return None
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) and decoded.get("stream") is True else None


def unstreamed(body: dict[str, Any]) -> bytes:
    """The request without ``stream`` and ``stream_options``: what the service answers."""
    whole = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    return json.dumps(whole).encode()


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\n".encode() + _data({"type": kind, **payload})


def _chat_events(reply: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    head = {k: reply[k] for k in ("id", "created", "model", "system_fingerprint", "service_tier")}
    head["object"] = "chat.completion.chunk"

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        return _data({**head, "choices": choices, "usage": usage})

    for choice in reply["choices"]:
        index = choice["index"]
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])  # fmt: skip
        for token in tokenize(choice["message"]["content"] or ""):
            yield chunk([{"index": index, "delta": {"content": token}, "logprobs": None,
                          "finish_reason": None}])  # fmt: skip
        yield chunk([{"index": index, "delta": {}, "logprobs": None,
                      "finish_reason": choice["finish_reason"]}])  # fmt: skip
    if include_usage:
        yield chunk([], reply["usage"])
    yield b"data: [DONE]\n\n"


def _response_events(reply: dict[str, Any]) -> Iterator[bytes]:
    sequence = iter(range(1 << 30))

    def event(kind: str, **payload: Any) -> bytes:
        return _event(kind, {**payload, "sequence_number": next(sequence)})

    started = {**reply, "status": "in_progress", "output": [], "usage": None,
               "incomplete_details": None, "completed_at": None}  # fmt: skip
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    for output_index, item in enumerate(reply["output"]):
        where = {"item_id": item["id"], "output_index": output_index}
        yield event("response.output_item.added", output_index=output_index,
                    item={**item, "status": "in_progress", "content": []})  # fmt: skip
        for content_index, part in enumerate(item["content"]):
            empty = {**part, "text": ""}
            yield event("response.content_part.added", **where, content_index=content_index,
                        part=empty)  # fmt: skip
            for token in tokenize(part["text"]):
                yield event("response.output_text.delta", **where, content_index=content_index,
                            delta=token, logprobs=[])  # fmt: skip
            yield event("response.output_text.done", **where, content_index=content_index,
                        text=part["text"], logprobs=[])  # fmt: skip
            yield event("response.content_part.done", **where, content_index=content_index,
                        part=part)  # fmt: skip
        yield event("response.output_item.done", output_index=output_index, item=item)
    final = "response.incomplete" if reply["status"] == "incomplete" else "response.completed"
    yield event(final, response=reply)


def stream(
    service: LocalModelService, method: str, path: str, body: dict[str, Any]
) -> LocalResponse | tuple[dict[str, str], Iterator[bytes]]:
    """The events answering a streamed request, with their headers; or the service's
    error response when it refuses the request."""
    options = body.get("stream_options")
    answer = service.handle(method, path, unstreamed(body))
    if answer.status != 200:
        return answer
    if options is not None and not isinstance(options, dict):
        from runner.localmodel.service import error_body

        message = "Invalid type for 'stream_options': expected an object."
        return LocalResponse(400, answer.headers, error_body(message, param="stream_options"))
    reply = json.loads(answer.body)
    headers = {**answer.headers, "content-type": "text/event-stream; charset=utf-8"}
    if route_of(path) == "/responses":
        return headers, _response_events(reply)
    include_usage = bool((options or {}).get("include_usage"))
    return headers, _chat_events(reply, include_usage)
