"""What a YAML job file asks, by request kind: ``api:`` and its prompt fields.

A chat job has ``messages:``; a responses job has ``input:`` (a string, or a list of
role/content messages) and optionally ``instructions:``; an embeddings job has ``input:``
(a string or a list of strings). This module owns checking those fields for the file's
kind, naming the strings that may carry ``{placeholders}``, and filling them in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from runner.kinds import Api

__all__ = ["PROMPT_KEYS", "Prompt", "parse_api", "parse_prompt"]

Path_ = tuple[str | int, ...]

PROMPT_KEYS = ("api", "messages", "input", "instructions")
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
INPUT_ROLES = ("system", "developer", "user", "assistant")
_NEEDS = {
    Api.CHAT: ("messages",),
    Api.RESPONSES: ("input", "instructions"),
    Api.EMBEDDINGS: ("input",),
}


class Lines(Protocol):
    """Where a YAML path is, and the error naming it (``yamlspec._Lines``)."""

    def fail(self, at: Path_, problem: str, line: int | None = None) -> NoReturn: ...


@dataclass(frozen=True)
class Prompt:
    """The prompt fields of a job file's body, before placeholders are filled."""

    api: Api
    fields: dict[str, Any]  # messages (chat), or input and maybe instructions

    def templates(self) -> Iterator[tuple[Path_, str]]:
        """Every string that may hold placeholders, with its path in the file."""
        for name, value in self.fields.items():
            if isinstance(value, str):
                yield (name,), value
                continue
            for index, item in enumerate(value):
                if isinstance(item, str):
                    yield (name, index), item
                elif isinstance(item["content"], str):
                    yield (name, index, "content"), item["content"]
                else:  # content parts: the text parts are templates, images are not
                    for part_index, part in enumerate(item["content"]):
                        if _TEXT_KEY in part:
                            yield (name, index, "content", part_index, "text"), part["text"]

    def filled(self, fill: Callable[[str], str]) -> dict[str, Any]:
        """The body's prompt fields with ``fill`` applied to every template string."""
        body: dict[str, Any] = {}
        for name, value in self.fields.items():
            if isinstance(value, str):
                body[name] = fill(value)
            else:
                body[name] = [_filled_item(item, fill) for item in value]
        return body


_TEXT_KEY = "text"


def _filled_item(item: Any, fill: Callable[[str], str]) -> Any:
    if isinstance(item, str):
        return fill(item)
    content = item["content"]
    if isinstance(content, str):
        return {**item, "content": fill(content)}
    parts = [{**p, "text": fill(p["text"])} if _TEXT_KEY in p else p for p in content]
    return {**item, "content": parts}


def _parts_problem(content: list[Any]) -> tuple[Path_, str] | None:
    """Where a list of content parts is wrong: each a mapping with a type, text parts
    with text (images and other parts pass as they are)."""
    if not content:
        return (), "must be a string or a non-empty list of content parts"
    for index, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            return (index,), "must be a content part: a mapping with a type"
        if part["type"] in ("text", "input_text") and not isinstance(part.get("text"), str):
            return (index, "text"), "must be a string"
    return None


def parse_api(data: Mapping[str, Any], lines: Lines) -> Api:
    value = data.get("api", Api.CHAT.value)
    if value not in {api.value for api in Api}:
        lines.fail(("api",), f"must be one of {', '.join(a.value for a in Api)}, got {value!r}")
    return Api(value)


def _messages(data: Mapping[str, Any], key: str, roles: tuple[str, ...], lines: Lines) -> list[Any]:
    messages = data.get(key)
    if not isinstance(messages, list) or not messages:
        lines.fail((key,), "must be a non-empty list of {role, content} mappings")
    for index, message in enumerate(messages):
        at: Path_ = (key, index)
        if not isinstance(message, Mapping):
            lines.fail(at, "must be a mapping with role and content")
        allowed = ("role", "content", "name") if key == "messages" else ("role", "content")
        unknown = sorted(set(message) - set(allowed))
        if unknown:
            lines.fail((*at, unknown[0]), f"unknown key (allowed: {', '.join(allowed)})")
        if message.get("role") not in roles:
            lines.fail((*at, "role"), f"must be one of {', '.join(roles)}")
        content = message.get("content")
        if isinstance(content, list):
            if problem := _parts_problem(content):
                lines.fail((*at, "content", *problem[0]), problem[1])
        elif not isinstance(content, str):
            lines.fail((*at, "content"), "must be a string or a list of content parts")
        if "name" in message and not isinstance(message["name"], str):
            lines.fail((*at, "name"), "must be a string")
    return [
        {**m, "content": [dict(p) for p in m["content"]]}
        if isinstance(m["content"], list)
        else dict(m)
        for m in messages
    ]


def _input(data: Mapping[str, Any], api: Api, lines: Lines) -> str | list[Any]:
    value = data.get("input")
    if isinstance(value, str) and value:
        return value
    if api is Api.RESPONSES:
        if not isinstance(value, list):
            lines.fail(("input",), "must be a non-empty string or a list of {role, content}")
        return _messages(data, "input", INPUT_ROLES, lines)
    if not isinstance(value, list) or not value:
        lines.fail(("input",), "must be a non-empty string or a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            lines.fail(("input", index), "must be a non-empty string")
    return list(value)


def parse_prompt(data: Mapping[str, Any], api: Api, lines: Lines) -> Prompt:
    """The prompt fields of ``api``'s kind; another kind's field is refused at its line."""
    allowed = _NEEDS[api]
    for key in ("messages", "input", "instructions"):
        if key in data and key not in allowed:
            lines.fail((key,), f"api: {api.value} takes {' and '.join(allowed)}, not {key}")
    if api is Api.CHAT:
        return Prompt(api, {"messages": _messages(data, "messages", CHAT_ROLES, lines)})
    if "input" not in data:
        lines.fail((), f"'input' is required with api: {api.value}")
    fields: dict[str, Any] = {"input": _input(data, api, lines)}
    if "instructions" in data:
        if not isinstance(data["instructions"], str):
            lines.fail(("instructions",), "must be a string")
        fields["instructions"] = data["instructions"]
    return Prompt(api, fields)
