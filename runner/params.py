"""Validation of chat-completion request parameters (names and types).

Job files may only use parameters listed here under ``params:``; server-specific
extras go under ``extra_params:`` and pass through unchecked. OpenAI Batch files
are taken as they are, but the parameters listed here are still type-checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], str | None]

# OpenAI's seed is a 64-bit signed integer, and so is the jobs.seed column (BIGINT).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(lo: float, hi: float) -> Check:
    def check(value: Any) -> str | None:
        if not _is_number(value) or not lo <= value <= hi:
            return f"must be a number from {lo:g} to {hi:g}, got {value!r}"
        return None

    return check


def _integer(lo: int, hi: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        if value < lo or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            return f"must be an integer {bound}, got {value!r}"
        return None

    return check


def _of_type(kind: type | tuple[type, ...], label: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) and kind is not bool:
            return f"must be {label}, got {value!r}"
        return None if isinstance(value, kind) else f"must be {label}, got {value!r}"

    return check


def _stop(value: Any) -> str | None:
    if isinstance(value, str):
        return None
    if (
        isinstance(value, list)
        and 1 <= len(value) <= 4
        and all(isinstance(v, str) and v for v in value)
    ):
        return None
    return f"must be a string or a list of 1 to 4 non-empty strings, got {value!r}"


def _response_format(value: Any) -> str | None:
    if not isinstance(value, Mapping) or value.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        return "must be a mapping with type 'text', 'json_object' or 'json_schema'"
    return None


def _logit_bias(value: Any) -> str | None:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and _is_number(v) and -100 <= v <= 100 for k, v in value.items()
    ):
        return "must map token ids (strings) to numbers from -100 to 100"
    return None


def _metadata(value: Any) -> str | None:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return "must map strings to strings"
    return None


MAX_SAMPLES = 128  # the most choices (``n``, samples per run) one chat request may ask for

PARAMS: dict[str, Check] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_tokens": _integer(1),
    "max_completion_tokens": _integer(1),
    "stop": _stop,
    "n": _integer(1, MAX_SAMPLES),
    "logprobs": _of_type(bool, "true or false"),
    "top_logprobs": _integer(0, 20),
    "response_format": _response_format,
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "logit_bias": _logit_bias,
    "user": _of_type(str, "a string"),
    "metadata": _metadata,
    "store": _of_type(bool, "true or false"),
    "service_tier": _of_type(str, "a string"),
    "reasoning_effort": _of_type(str, "a string"),
    "verbosity": _of_type(str, "a string"),
    "tools": _of_type(list, "a list"),
    "tool_choice": _of_type((str, dict), "a string or a mapping"),
    "parallel_tool_calls": _of_type(bool, "true or false"),
    "modalities": _of_type(list, "a list"),
    "prediction": _of_type(dict, "a mapping"),
}

# Parameters that cannot be set under params:, with the reason a user sees.
REJECTED: dict[str, str] = {
    "seed": "set the seed with the top-level 'seed' or 'seeds' key",
    "model": "set the model with the top-level 'model' or 'models' key",
    "messages": "set the messages with the top-level 'messages' key",
    "stream": "streaming is not supported: seed-runner stores whole responses",
    "stream_options": "streaming is not supported: seed-runner stores whole responses",
}


def check_seed(value: Any) -> str | None:
    """The problem with a request's seed, or None if it is fine."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if not SEED_MIN <= value <= SEED_MAX:
        return f"must be a 64-bit signed integer (from -2**63 to 2**63-1), got {value}"
    return None


def check_param(name: str, value: Any) -> str | None:
    """The problem with one known parameter's value, or None if it is fine."""
    return PARAMS[name](value)


def check_body_params(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """First (field, problem) in a request body's known parameters, for Batch files."""
    if body.get("stream"):
        return "stream", REJECTED["stream"]
    if "seed" in body and (problem := check_seed(body["seed"])):
        return "seed", problem
    if "max_tokens" in body and "max_completion_tokens" in body:
        return "max_tokens", "give max_tokens or max_completion_tokens, not both"
    for name, value in body.items():
        if name in PARAMS:
            problem = check_param(name, value)
            if problem:
                return name, problem
    return None
