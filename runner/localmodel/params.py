"""Validation of request bodies for the local endpoint, with OpenAI's error semantics.

This module owns the boundary between untrusted JSON and the model: it turns a decoded
body into a frozen request spec or raises :class:`RequestError` naming the offending
parameter, the way the OpenAI API answers (HTTP 400, ``invalid_request_error``). Unknown
top-level keys are rejected ("Unrecognized request argument supplied: X"); parameters that
cannot change the text (``user``, ``metadata``, ``store``...) are checked and accepted;
features the local model does not have (tools, audio, streaming) are refused with a
message that says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from runner.localmodel.model import MAX_TOP_LOGPROBS
from runner.localmodel.structured import parse_schema
from runner.localmodel.tools import Tool, ToolError, chosen_tool, parse_tools

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_COMPLETION_TOKENS",
    "ChatMessage",
    "ChatRequest",
    "EmbeddingRequest",
    "RequestError",
    "parse_chat_request",
    "parse_embedding_request",
]

DEFAULT_MAX_TOKENS = 1024  # completion cap when the request sets none
MAX_COMPLETION_TOKENS = 16384
MAX_CHOICES = 128
EMBEDDING_DIMENSIONS = 256

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "function_call", "audio"}
)
_SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority", "fast"})


class RequestError(Exception):
    """The request is invalid; maps to an OpenAI-shaped error response."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code
        self.type = type_


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str  # text parts joined; "" for an assistant turn without content
    name: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request; defaults already filled in."""

    model: str
    messages: tuple[ChatMessage, ...]
    seed: int | None
    temperature: float
    top_p: float
    max_tokens: int
    max_tokens_given: bool
    stop: tuple[str, ...]
    n: int
    presence_penalty: float
    frequency_penalty: float
    logprobs: bool
    top_logprobs: int | None
    response_format: OutputFormat
    json_schema: dict[str, Any] | None = None  # json_schema format: the schema to follow
    tool: Tool | None = None  # the function this request calls instead of replying in text

    @property
    def prompt(self) -> str:
        """The text the model answers: the last user message (else the last message)."""
        return self.messages[self._prompt_index].content

    @property
    def context(self) -> str:
        """What the model reads before the prompt: every other message, in order ("" if none)."""
        index = self._prompt_index
        return "\n\n".join(m.content for i, m in enumerate(self.messages) if i != index)

    @property
    def _prompt_index(self) -> int:
        for index in range(len(self.messages) - 1, -1, -1):
            if self.messages[index].role == "user":
                return index
        return len(self.messages) - 1


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    encoding_format: Literal["float", "base64"]
    dimensions: int


def _missing(param: str) -> RequestError:
    return RequestError(f"Missing required parameter: '{param}'.", param)


def _type_error(param: str, value: object, expected: str) -> RequestError:
    return RequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)}.",
        param,
        code="invalid_type",
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(key, value, "a decimal")
    if not (math.isfinite(value) and low <= value <= high):
        raise RequestError(
            f"Invalid '{key}': {value} is out of range; expected a value between {low:g} and "
            f"{high:g}.",
            key,
            code="decimal_out_of_range" if isinstance(value, float) else "integer_out_of_range",
        )
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(key, value, "an integer")
    if not low <= value <= high:
        raise RequestError(
            f"Invalid '{key}': integer {value} is out of range; expected a value between "
            f"{low} and {high}.",
            key,
            code="integer_out_of_range",
        )
    return value


def _boolean(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _type_error(key, value, "a boolean")
    return value


def _string(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _type_error(key, value, "a string")


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise RequestError("You must provide a model parameter.", "model")
    if not isinstance(model, str) or not model:
        raise _type_error("model", model, "a non-empty string")
    return model


def _unsupported(param: str, what: str) -> RequestError:
    return RequestError(
        f"'{param}' is not supported by the local model: {what}.",
        param,
        code="unsupported_parameter",
    )


def _reject_unknown(body: dict[str, Any], known: frozenset[str]) -> None:
    for key in body:
        if key not in known:
            raise RequestError(
                f"Unrecognized request argument supplied: {key}", key, code="unknown_parameter"
            )


# Content part types of chat messages: the key holding each one's text.
CHAT_TEXT_PARTS: dict[str, str] = {"text": "text", "refusal": "refusal"}
CHAT_IMAGE_PARTS: dict[str, str] = {"image_url": "image_url"}


def content_text(
    content: object,
    param: str,
    text_parts: Mapping[str, str] = CHAT_TEXT_PARTS,
    image_parts: Mapping[str, str] | None = None,
    index_sep: str = ".",
) -> str:
    """The text of a message's ``content`` (a string or content parts), parts joined.

        ``text_parts`` maps each text part type to the key holding its text; ``image_parts``
        maps each image part type to its key: an image passes (checked, never read: the local
        model reads text only). Parts are named ``{param}{index_sep}[{index}]`` in errors (chat
    says ``content.[0]``, the Responses API ``content[0]``).
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _type_error(param, content, "a string or an array of content parts")
    images = image_parts or {}
    texts = []
    for index, part in enumerate(content):
        where = f"{param}{index_sep}[{index}]"
        if not isinstance(part, dict):
            raise _type_error(where, part, "an object")
        kind = part.get("type")
        key = text_parts.get(kind) if isinstance(kind, str) else None
        image = images.get(kind) if isinstance(kind, str) else None
        if image is not None:
            if not isinstance(part.get(image), str | dict):
                raise _type_error(f"{where}.{image}", part.get(image), "a string or an object")
            continue
        if key is None:
            raise _unsupported(f"{where}.type", f"content parts of type {kind!r}")
        text = part.get(key)
        if not isinstance(text, str):
            raise _type_error(f"{where}.{key}", text, "a string")
        texts.append(text)
    return "".join(texts)


def message_role(
    item: dict[str, Any],
    where: str,
    keys: frozenset[str],
    roles: tuple[str, ...],
    noun: str,
) -> str:
    """The ``role`` of a message ``item`` (named ``where``) once its keys and role are
    checked: unknown fields and roles are refused as OpenAI refuses them."""
    for key in item:
        if key not in keys:
            raise RequestError(f"Unrecognized {noun} field: '{key}'.", f"{where}.{key}")
    role = item.get("role")
    if role not in roles:
        quoted = [f"'{r}'" for r in roles]
        raise RequestError(
            f"Invalid value for '{where}.role': {role!r}. Supported values are: "
            f"{', '.join(quoted[:-1])} and {quoted[-1]}.",
            f"{where}.role",
            code="invalid_value",
        )
    return str(role)


def _messages(body: dict[str, Any]) -> tuple[ChatMessage, ...]:
    raw = body.get("messages")
    if raw is None:
        raise _missing("messages")
    if not isinstance(raw, list):
        raise _type_error("messages", raw, "an array")
    if not raw:
        raise RequestError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "messages",
            code="empty_array",
        )
    messages = []
    for index, item in enumerate(raw):
        where = f"messages.[{index}]"
        if not isinstance(item, dict):
            raise _type_error(where, item, "an object")
        role = message_role(item, where, _MESSAGE_KEYS, _ROLES, "message")
        content = item.get("content")
        if content is None and role != "assistant":
            raise _missing(f"{where}.content")
        text = (
            ""
            if content is None
            else content_text(content, f"{where}.content", image_parts=CHAT_IMAGE_PARTS)
        )
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise _type_error(f"{where}.name", name, "a string")
        messages.append(ChatMessage(role=role, content=text, name=name))
    return tuple(messages)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
        raise _type_error("stop", stop, "a string or an array of strings")
    if len(stops) > 4:
        raise RequestError(
            f"Invalid 'stop': array too long. Expected at most 4 sequences, got {len(stops)}.",
            "stop",
            code="array_above_max_length",
        )
    if any(not item for item in stops):
        raise RequestError("Invalid 'stop': stop sequences must not be empty.", "stop")
    return tuple(stops)


OutputFormat = Literal["text", "json_object", "json_schema"]


def format_kind(
    value: object, param: str, schema_in: str | None
) -> tuple[OutputFormat, dict[str, Any] | None]:
    """The output format asked for by ``value`` (chat's ``response_format``, the Responses
    API's ``text.format``, named ``param``), and its JSON schema for ``json_schema``:
    found under ``value[schema_in]`` (chat's ``json_schema``), or in ``value`` itself."""
    if value is None:
        return "text", None
    if not isinstance(value, dict):
        raise _type_error(param, value, "an object")
    kind = value.get("type")
    if kind == "json_schema":
        where = f"{param}.{schema_in}" if schema_in else param
        problem, schema = parse_schema(value.get(schema_in) if schema_in else value, where)
        if problem:
            raise RequestError(problem, where)
        return "json_schema", schema
    if kind not in ("text", "json_object"):
        raise RequestError(
            f"Invalid value for '{param}.type': {kind!r}. Supported values are: "
            "'text', 'json_object' and 'json_schema'.",
            f"{param}.type",
            code="invalid_value",
        )
    return ("json_object" if kind == "json_object" else "text"), None


def check_stream(body: dict[str, Any]) -> None:
    """``stream`` and ``stream_options`` in the only form served: whole responses."""
    if body.get("stream") is True:
        raise _unsupported("stream", "send stream=false (or omit it); streaming is not served")
    _boolean(body, "stream")
    if body.get("stream_options") is not None:
        raise RequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )


def _check_ignored(body: dict[str, Any]) -> None:
    """Parameters that cannot change the text: type-checked, then accepted."""
    for key in ("user", "prompt_cache_key", "prompt_cache_retention", "safety_identifier"):
        _string(body, key)
    for key in ("reasoning_effort", "verbosity"):
        _string(body, key)
    _boolean(body, "store")
    _boolean(body, "parallel_tool_calls")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise _type_error("metadata", metadata, "an object of strings")
    tier = body.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise RequestError(f"Invalid value for 'service_tier': {tier!r}.", "service_tier")


def _check_unsupported(body: dict[str, Any]) -> None:
    """Features the local model lacks: accepted only in their empty or neutral form."""
    check_stream(body)
    if body.get("functions"):
        raise _unsupported("functions", "use tools")
    if body.get("function_call") not in (None, "none", "auto"):
        raise _unsupported("function_call", "use tools and tool_choice")
    if body.get("logit_bias"):
        raise _unsupported("logit_bias", "its token ids belong to another vocabulary")
    if body.get("modalities") not in (None, ["text"]):
        raise _unsupported("modalities", "only text output exists")
    for key in ("audio", "prediction", "web_search_options", "moderation"):
        if body.get(key) is not None:
            raise _unsupported(key, "this feature does not exist locally")


_CHAT_KEYS = frozenset(
    (
        *("model", "messages", "seed", "temperature", "top_p", "max_tokens"),
        *("max_completion_tokens", "stop", "n", "presence_penalty", "frequency_penalty"),
        *("logprobs", "top_logprobs", "response_format", "stream", "stream_options", "user"),
        *("metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key"),
        *("prompt_cache_retention", "safety_identifier", "reasoning_effort", "verbosity"),
        *("tools", "tool_choice", "functions", "function_call", "logit_bias", "modalities"),
        *("audio", "prediction", "web_search_options", "moderation"),
    )
)


def tool_to_call(body: dict[str, Any], prompt: str, *, nested: bool) -> Tool | None:
    """The function tool the request calls (``runner.localmodel.tools``); 400 if bad."""
    try:
        return chosen_tool(parse_tools(body, nested), body.get("tool_choice"), prompt, nested)
    except ToolError as exc:
        raise RequestError(exc.message, exc.param) from None


def _max_tokens(body: dict[str, Any]) -> int | None:
    limits = [
        _integer(body, key, 1, MAX_COMPLETION_TOKENS)
        for key in ("max_tokens", "max_completion_tokens")
    ]
    if limits[0] is not None and limits[1] is not None:
        raise RequestError(
            "Set either 'max_tokens' or 'max_completion_tokens', not both.", "max_tokens"
        )
    return limits[0] if limits[0] is not None else limits[1]


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a decoded ``/v1/chat/completions`` body."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    _reject_unknown(body, _CHAT_KEYS)
    model = _model(body)
    messages = _messages(body)
    _check_unsupported(body)
    _check_ignored(body)
    max_tokens = _max_tokens(body)
    logprobs = _boolean(body, "logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top_logprobs is not None and not logprobs:
        raise RequestError(
            "Invalid 'top_logprobs': it may only be set when 'logprobs' is true.", "top_logprobs"
        )
    response_format, schema = format_kind(
        body.get("response_format"), "response_format", "json_schema"
    )
    if schema is not None and logprobs:
        raise _unsupported("logprobs", "with a json_schema response_format")
    prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
    tool = tool_to_call(body, prompt, nested=True)
    if response_format == "json_object" and not any(
        "json" in message.content.lower() for message in messages
    ):
        raise RequestError(
            "'messages' must contain the word 'json' in some form, to use 'response_format' "
            "of type 'json_object'.",
            "messages",
        )
    return ChatRequest(
        model=model,
        messages=messages,
        seed=_integer(body, "seed", -(2**63), 2**63 - 1),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        max_tokens_given=max_tokens is not None,
        stop=_stop(body),
        n=_integer(body, "n", 1, MAX_CHOICES) or 1,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logprobs=logprobs,
        top_logprobs=(top_logprobs or 0) if logprobs else None,
        response_format=response_format,
        json_schema=schema,
        tool=tool,
    )


_EMBEDDING_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def _embedding_inputs(body: dict[str, Any]) -> tuple[str, ...]:
    raw = body.get("input")
    if raw is None:
        raise _missing("input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise _type_error("input", raw, "a non-empty string or array of strings")
    if len(items) > 2048:
        raise RequestError("Invalid 'input': at most 2048 inputs per request.", "input")
    for index, item in enumerate(items):
        if isinstance(item, int | list):
            raise _unsupported("input", "token-id input; send the text itself")
        if not isinstance(item, str):
            raise _type_error(f"input.[{index}]", item, "a string")
        if not item:
            raise RequestError("'$.input' is invalid: inputs must not be empty strings.", "input")
    return tuple(items)


def parse_embedding_request(body: object) -> EmbeddingRequest:
    """Validate a decoded ``/v1/embeddings`` body."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    _reject_unknown(body, _EMBEDDING_KEYS)
    model = _model(body)
    inputs = _embedding_inputs(body)
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise RequestError(
            f"Invalid value for 'encoding_format': {fmt!r}. Supported values are: 'float' and "
            "'base64'.",
            "encoding_format",
            code="invalid_value",
        )
    _string(body, "user")
    dimensions = _integer(body, "dimensions", 1, EMBEDDING_DIMENSIONS)
    return EmbeddingRequest(
        model=model,
        inputs=inputs,
        encoding_format="base64" if fmt == "base64" else "float",
        dimensions=EMBEDDING_DIMENSIONS if dimensions is None else dimensions,
    )
