"""Reading what each request kind's API returns into the fields a run stores.

``read(api, data)`` takes a decoded 200 body and returns the ``Completion`` fields that
depend on the kind, checking only the shape seed-runner relies on (servers differ in the
optional fields, and the SDK is as lenient). A body that is not the kind's shape raises
``ValueError``: ``runner.endpoints.client`` makes it a retryable ``invalid_response``.

* chat: every choice's ``message.content`` in index order, ``finish_reason`` of the first,
  ``system_fingerprint``.
* responses: the text of the ``output_text`` parts of its ``message`` items (what the
  SDK's ``output_text`` gives), ``status`` and ``incomplete_details``; no fingerprint
  exists in this API, so none is stored (never one made up). A ``failed`` response is
  an error, not an output.

* embeddings: every input's vector in index order (floats, or ``base64`` float32),
  packed as float32 bytes (``runner.kinds.vectors``); the stored response is the body
  with each ``embedding`` value replaced by ``null`` (``""`` for base64; the vectors are
  in the blob, not repeated as JSON text). There is no text output.

Chat and responses report usage with cached and reasoning token details and
``service_tier``, and their tool calls (chat: the first choice's) as canonical JSON of
``[{"name", "arguments"}]``, the arguments parsed, so that calls compare by meaning.
"""

from __future__ import annotations

import json
from typing import Any

from runner.hashing import canonical_json
from runner.kinds import Api, vectors

__all__ = ["read"]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _detail(usage: dict[str, Any], key: str, field: str) -> int | None:
    details = usage.get(key)
    return _int(details.get(field)) if isinstance(details, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _choices(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The choices of a chat completion body, in index order."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError("the response has no choices")
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise ValueError("a choice has no message")
        content = choice["message"].get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError("a message's content is not text")
    return sorted(choices, key=lambda c: c.get("index") or 0)


def _calls(calls: list[tuple[Any, Any]]) -> str | None:
    """Tool calls as stored: canonical JSON of ``[{"name", "arguments"}]``, the arguments
    parsed and canonical (kept as the string sent when they are not JSON); None if none."""
    stored = []
    for name, arguments in calls:
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = arguments
        stored.append({"name": name, "arguments": parsed})
    return canonical_json(stored) if stored else None


def _chat(data: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    choices = _choices(data)
    raw = choices[0]["message"].get("tool_calls")
    calls = [
        (c["function"].get("name"), c["function"].get("arguments"))
        for c in (raw if isinstance(raw, list) else [])
        if isinstance(c, dict) and isinstance(c.get("function"), dict)
    ]
    return {
        "tool_calls": _calls(calls),
        "outputs": tuple(c["message"].get("content") for c in choices),
        "finish_reason": choices[0].get("finish_reason"),
        "system_fingerprint": _str(data.get("system_fingerprint")),
        "prompt_tokens": _int(usage.get("prompt_tokens")),
        "completion_tokens": _int(usage.get("completion_tokens")),
        "cached_tokens": _detail(usage, "prompt_tokens_details", "cached_tokens"),
        "reasoning_tokens": _detail(usage, "completion_tokens_details", "reasoning_tokens"),
    }


def _output_text(output: Any) -> str:
    if not isinstance(output, list):
        raise ValueError("the response has no output list")
    texts = []
    for item in output:
        if not isinstance(item, dict):
            raise ValueError("an output item is not an object")
        if item.get("type") != "message":
            continue  # reasoning, tool calls: not text
        content = item.get("content")
        if not isinstance(content, list):
            raise ValueError("a message item has no content list")
        for part in content:
            if isinstance(part, dict) and part.get("type") == "output_text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ValueError("an output_text part's text is not text")
                texts.append(text)
    return "".join(texts)


def _responses(data: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    status = _str(data.get("status"))
    if status == "failed":
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        raise ValueError(f"the response failed: {message or 'no error given'}")
    details = data.get("incomplete_details")
    found = data.get("output")
    output: list[Any] = found if isinstance(found, list) else []
    calls = [
        (item.get("name"), item.get("arguments"))
        for item in output
        if isinstance(item, dict) and item.get("type") == "function_call"
    ]
    return {
        "tool_calls": _calls(calls),
        "outputs": (_output_text(data.get("output")),),
        "finish_reason": None,
        "system_fingerprint": None,
        "prompt_tokens": _int(usage.get("input_tokens")),
        "completion_tokens": _int(usage.get("output_tokens")),
        "cached_tokens": _detail(usage, "input_tokens_details", "cached_tokens"),
        "reasoning_tokens": _detail(usage, "output_tokens_details", "reasoning_tokens"),
        "response_status": status,
        "incomplete_details": (
            json.dumps(details, ensure_ascii=False, sort_keys=True) if details else None
        ),
    }


def _embeddings(data: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    items = data.get("data")
    if not isinstance(items, list) or not items:
        raise ValueError("the response has no data list")
    rows = []
    for item in sorted(items, key=lambda i: i.get("index") or 0 if isinstance(i, dict) else 0):
        value = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(value, str):
            rows.append(vectors.decode_base64(value))
        elif isinstance(value, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            rows.append([float(v) for v in value])
        else:
            raise ValueError("an embedding is neither a list of numbers nor base64")
    blob, dimensions = vectors.pack(rows)
    return {
        "response": json.dumps(vectors.stripped(data), ensure_ascii=False, separators=(",", ":")),
        "outputs": (None,),
        "finish_reason": None,
        "system_fingerprint": None,
        "prompt_tokens": _int(usage.get("prompt_tokens")),
        "completion_tokens": None,
        "embedding": blob,
        "embedding_dimensions": dimensions,
    }


def read(api: Api, data: Any) -> dict[str, Any]:
    """The kind-dependent ``Completion`` fields of a decoded body; ValueError if it is not
    a body of this kind."""
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    raw = data.get("usage")
    usage: dict[str, Any] = raw if isinstance(raw, dict) else {}
    reader = {Api.RESPONSES: _responses, Api.EMBEDDINGS: _embeddings}.get(api, _chat)
    fields = reader(data, usage)
    fields["total_tokens"] = _int(usage.get("total_tokens"))
    fields["service_tier"] = _str(data.get("service_tier"))
    return fields
