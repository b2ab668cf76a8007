"""Parameters of each request kind, checked by name and type (chat's are ``runner.params``).

Job files may only use the parameters listed for their kind under ``params:``; Batch
lines are taken as they are, but the listed parameters are still type-checked and the
fields each kind needs (``messages``, ``input``) must be there. ``seed`` is refused on
responses and embeddings jobs with the reason and what to do instead: those APIs have no
seed, and sending one would only get an HTTP 400 for every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.kinds import Api
from runner.params import (
    PARAMS as CHAT_PARAMS,
)
from runner.params import (
    REJECTED as CHAT_REJECTED,
)
from runner.params import (
    Check,
    _integer,
    _metadata,
    _number,
    _of_type,
    check_body_params,
)

__all__ = ["NO_SEED", "check_kind_body", "params_for", "rejected_for"]

NO_SEED = {
    Api.RESPONSES: (
        "the Responses API has no seed parameter, so a responses job cannot be seeded: "
        "send seeded requests as chat completions (api: chat, url /v1/chat/completions); "
        "to measure an unseeded job, take several samples of it (runner verify FILE "
        "--times K) and judge rounds by their spread, not by exact matches"
    ),
    Api.EMBEDDINGS: "the Embeddings API has no seed parameter: leave it out",
}


def _text_config(value: Any) -> str | None:
    if not isinstance(value, Mapping) or not set(value) <= {"format", "verbosity"}:
        return "must be a mapping with format and/or verbosity"
    fmt = value.get("format")
    if fmt is not None and (
        not isinstance(fmt, Mapping)
        or fmt.get("type") not in ("text", "json_object", "json_schema")
    ):
        return "format must be a mapping with type 'text', 'json_object' or 'json_schema'"
    return None


def _one_of(*values: str) -> Check:
    def check(value: Any) -> str | None:
        if value not in values:
            return f"must be one of {', '.join(values)}, got {value!r}"
        return None

    return check


RESPONSES_PARAMS: dict[str, Check] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_output_tokens": _integer(16),
    "text": _text_config,
    "reasoning": _of_type(dict, "a mapping"),
    "tools": _of_type(list, "a list"),
    "tool_choice": _of_type((str, dict), "a string or a mapping"),
    "parallel_tool_calls": _of_type(bool, "true or false"),
    "max_tool_calls": _integer(1),
    "top_logprobs": _integer(0, 20),
    "truncation": _one_of("auto", "disabled"),
    "include": _of_type(list, "a list"),
    "user": _of_type(str, "a string"),
    "metadata": _metadata,
    "store": _of_type(bool, "true or false"),
    "service_tier": _of_type(str, "a string"),
    "prompt_cache_key": _of_type(str, "a string"),
    "prompt_cache_retention": _of_type(str, "a string"),
    "safety_identifier": _of_type(str, "a string"),
    "background": _of_type(bool, "true or false"),
    "previous_response_id": _of_type(str, "a string"),
    "conversation": _of_type((str, dict), "a string or a mapping"),
    "prompt": _of_type(dict, "a mapping"),
}

EMBEDDINGS_PARAMS: dict[str, Check] = {
    "dimensions": _integer(1),
    "encoding_format": _one_of("float", "base64"),
    "user": _of_type(str, "a string"),
}

_STREAMING = "streaming is not supported: seed-runner stores whole responses"

RESPONSES_REJECTED: dict[str, str] = {
    "seed": NO_SEED[Api.RESPONSES],
    "model": "set the model with the top-level 'model' or 'models' key",
    "input": "set the input with the top-level 'input' key",
    "instructions": "set the instructions with the top-level 'instructions' key",
    "n": "the Responses API has no n: one output per request",
    "stream": _STREAMING,
    "stream_options": _STREAMING,
}

EMBEDDINGS_REJECTED: dict[str, str] = {
    "seed": NO_SEED[Api.EMBEDDINGS],
    "model": "set the model with the top-level 'model' or 'models' key",
    "input": "set the input with the top-level 'input' key",
}


def params_for(api: Api) -> dict[str, Check]:
    """The parameters a job of this kind may set under ``params:``."""
    return {Api.CHAT: CHAT_PARAMS, Api.RESPONSES: RESPONSES_PARAMS}.get(api, EMBEDDINGS_PARAMS)


def rejected_for(api: Api) -> dict[str, str]:
    """Parameters refused under ``params:`` for this kind, with the reason a user sees."""
    return {Api.CHAT: CHAT_REJECTED, Api.RESPONSES: RESPONSES_REJECTED}.get(
        api, EMBEDDINGS_REJECTED
    )


def _messages_problem(messages: Any) -> tuple[str, str] | None:
    if not isinstance(messages, list) or not messages:
        return "messages", "must be a non-empty list"
    if not all(isinstance(m, dict) and "role" in m for m in messages):
        return "messages", "every message must be an object with a role"
    return None


def _input_problem(api: Api, value: Any) -> tuple[str, str] | None:
    if isinstance(value, str) and value:
        return None
    if not isinstance(value, list) or not value:
        return "input", "must be a non-empty string or a non-empty list"
    if api is Api.EMBEDDINGS:
        if not all(isinstance(item, str) and item for item in value):
            return "input", "must be a string or a list of non-empty strings"
    elif not all(isinstance(item, dict) for item in value):
        return "input", "every input item must be an object (a message: role and content)"
    return None


def check_kind_body(api: Api, body: Mapping[str, Any]) -> tuple[str, str] | None:
    """First (field, problem) of a Batch line's body for its kind (``model`` is checked
    by the caller): the fields the kind needs, then its known parameters' types."""
    if api is Api.CHAT:
        return _messages_problem(body.get("messages")) or check_body_params(body)
    if "seed" in body:
        return "seed", NO_SEED[api]
    if problem := _input_problem(api, body.get("input")):
        return problem
    if api is Api.RESPONSES:
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            return "instructions", "must be a string"
        if body.get("stream"):
            return "stream", _STREAMING
    checks = params_for(api)
    for name, value in body.items():
        if name in checks and (why := checks[name](value)):
            return name, why
    return None
