"""The Responses API (``POST /v1/responses``) of the local model: request checks and body.

This module owns what differs from chat completions: the request's shape (``input`` as a
string or a list of message items, ``instructions``, ``max_output_tokens``, ``text.format``,
``reasoning``…) checked by name and type with OpenAI's error semantics, and the response
object (``output`` items, ``status`` and ``incomplete_details``, usage with input / output /
reasoning / cached token details). The draw itself is the chat one: a request becomes a
:class:`ChatRequest` (instructions first, as a system message) and goes through
``LocalModelService.generations``, so the seeding rules are the same. The Responses API has
no ``seed``: one is refused like any unknown parameter, and every draw comes from fresh
entropy (temperature 0 is still greedy, and so repeats).

A reply cut by ``max_output_tokens`` is ``status: "incomplete"`` with
``incomplete_details: {"reason": "max_output_tokens"}``, as OpenAI's is. No
``system_fingerprint`` exists in this API, so none is sent.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from runner.localmodel.model import MAX_TOP_LOGPROBS, Generation
from runner.localmodel.params import (
    DEFAULT_MAX_TOKENS,
    MAX_COMPLETION_TOKENS,
    ChatMessage,
    ChatRequest,
    OutputFormat,
    RequestError,
    _boolean,
    _check_ignored,
    _integer,
    _missing,
    _model,
    _number,
    _reject_unknown,
    _string,
    _type_error,
    _unsupported,
    check_stream,
    content_text,
    format_kind,
    message_role,
    tool_to_call,
)

__all__ = ["ResponsesRequest", "parse_responses_request", "response_body"]

MIN_OUTPUT_TOKENS = 16  # OpenAI refuses a smaller max_output_tokens

_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
_IMAGE_PARTS = {"input_image": "image_url"}
_ITEM_KEYS = frozenset({"type", "role", "content", "id", "status"})

_RESPONSES_KEYS = frozenset(
    (
        *("model", "input", "instructions", "max_output_tokens", "temperature", "top_p"),
        *("text", "reasoning", "tools", "tool_choice", "parallel_tool_calls", "max_tool_calls"),
        *("metadata", "store", "service_tier", "user", "prompt_cache_key", "safety_identifier"),
        *("prompt_cache_retention", "truncation", "include", "top_logprobs", "background"),
        *("stream", "stream_options", "previous_response_id", "conversation", "prompt"),
    )
)


@dataclass(frozen=True)
class ResponsesRequest:
    """A validated ``/v1/responses`` body; ``chat`` is the same draw as a chat request."""

    chat: ChatRequest
    body: dict[str, Any]  # the request as sent, for the echoed fields of the response
    max_output_tokens: int | None
    text_format: OutputFormat


def _input_messages(body: dict[str, Any]) -> list[ChatMessage]:
    raw = body.get("input")
    if raw is None:
        raise _missing("input")
    if isinstance(raw, str):
        return [ChatMessage(role="user", content=raw)]
    if not isinstance(raw, list):
        raise _type_error("input", raw, "a string or an array of input items")
    if not raw:
        raise RequestError("Invalid 'input': empty array.", "input", code="empty_array")
    messages = []
    for index, item in enumerate(raw):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise _type_error(where, item, "an object")
        kind = item.get("type", "message")
        if kind != "message":
            raise _unsupported(f"{where}.type", f"input items of type {kind!r} (only messages)")
        role = message_role(item, where, _ITEM_KEYS, _ROLES, "input item")
        if "content" not in item:
            raise _missing(f"{where}.content")
        text = content_text(item["content"], f"{where}.content", _TEXT_PARTS, _IMAGE_PARTS, "")
        messages.append(ChatMessage(role=role, content=text))
    return messages


def _text_format(body: dict[str, Any]) -> tuple[OutputFormat, dict[str, Any] | None]:
    text = body.get("text")
    if text is None:
        return "text", None
    if not isinstance(text, dict):
        raise _type_error("text", text, "an object")
    for key in text:
        if key not in ("format", "verbosity"):
            raise RequestError(f"Unrecognized field: 'text.{key}'.", f"text.{key}")
    _string(text, "verbosity")
    return format_kind(text.get("format"), "text.format", None)


def _check_features(body: dict[str, Any]) -> None:
    """What the local model lacks, accepted only in its empty or neutral form."""
    check_stream(body)
    _integer(body, "max_tool_calls", 1, 2**31 - 1)
    for key in ("previous_response_id", "conversation", "prompt"):
        if body.get(key) is not None:
            raise _unsupported(key, "the local model keeps no stored responses or prompts")
    if body.get("background") is True:
        raise _unsupported("background", "responses are answered at once")
    _boolean(body, "background")
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise _type_error("reasoning", reasoning, "an object")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise RequestError(
            f"Invalid value for 'truncation': {body['truncation']!r}.",
            "truncation",
            code="invalid_value",
        )
    include = body.get("include")
    if include is not None and not (
        isinstance(include, list) and all(isinstance(item, str) for item in include)
    ):
        raise _type_error("include", include, "an array of strings")


def parse_responses_request(body: object) -> ResponsesRequest:
    """Validate a decoded ``/v1/responses`` body."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    _reject_unknown(body, _RESPONSES_KEYS)
    model = _model(body)
    messages = _input_messages(body)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _type_error("instructions", instructions, "a string")
        messages.insert(0, ChatMessage(role="system", content=instructions))
    _check_features(body)
    _check_ignored(body)
    limit = _integer(body, "max_output_tokens", MIN_OUTPUT_TOKENS, MAX_COMPLETION_TOKENS)
    top_logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    text_format, schema = _text_format(body)
    if text_format == "json_object" and not any(
        "json" in message.content.lower() for message in messages
    ):
        raise RequestError(
            "Response input messages must contain the word 'json' in some form to use "
            "'text.format' of type 'json_object'.",
            "input",
        )
    chat = ChatRequest(
        model=model,
        messages=tuple(messages),
        seed=None,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=DEFAULT_MAX_TOKENS if limit is None else limit,
        max_tokens_given=limit is not None,
        stop=(),
        n=1,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        logprobs=False,
        top_logprobs=None,
        response_format=text_format,
        json_schema=schema,
        tool=tool_to_call(
            body,
            next((m.content for m in reversed(messages) if m.role == "user"), ""),
            nested=False,
        ),
    )
    del top_logprobs  # checked; the local model returns no logprobs in this API
    return ResponsesRequest(chat=chat, body=body, max_output_tokens=limit, text_format=text_format)


def response_body(
    request: ResponsesRequest,
    text: str,
    generation: Generation,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    """The response object for one drawn ``generation`` whose final text is ``text``."""
    body = request.body
    cut = generation.finish_reason == "length"
    status = "incomplete" if cut else "completed"
    now = int(time.time())
    message = {
        "id": "msg_" + secrets.token_hex(24),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    if request.chat.tool is not None:
        message = {
            "id": "fc_" + secrets.token_hex(24),
            "type": "function_call",
            "status": "completed",
            "call_id": "call_" + secrets.token_hex(12),
            "name": request.chat.tool.name,
            "arguments": text,
        }
    reasoning = body.get("reasoning") or {}
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": now,
        "status": status,
        "completed_at": None if cut else now,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": body.get("max_tool_calls"),
        "model": request.chat.model,
        "output": [message],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": request.chat.temperature,
        "text": {
            "format": (body.get("text") or {}).get("format") or {"type": "text"},
            "verbosity": (body.get("text") or {}).get("verbosity", "medium"),
        },
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": request.chat.top_p,
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
