"""Tool calls of the local model: which function a request makes it call, and with what.

A request with ``tools`` (chat: ``{"type": "function", "function": {name, parameters}}``;
responses: ``{"type": "function", name, parameters}``) gets a call instead of text when
``tool_choice`` asks for one: ``"required"`` (the first tool), a named function, or
``"auto"`` (the default) when a tool's name, read as words (``get_weather``: "get",
"weather"), all appear in the last user message. ``"none"`` never calls. The call's
``arguments`` are an instance of the tool's ``parameters`` schema made from the drawn
words (``runner.localmodel.structured``), so a seeded request repeats its call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from runner.localmodel.tokenizer import keywords

__all__ = ["Tool", "chosen_tool", "parse_tools"]


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any]


class ToolError(ValueError):
    """A bad ``tools`` / ``tool_choice``: (message, param)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def parse_tools(body: dict[str, Any], nested: bool) -> tuple[Tool, ...]:
    """The function tools of a body; ``nested``: chat's shape (under ``function``)."""
    raw = body.get("tools")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ToolError("Invalid type for 'tools': expected an array.", "tools")
    tools = []
    for index, item in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(item, dict) or item.get("type") != "function":
            raise ToolError(f"'{where}.type': only function tools exist locally.", f"{where}.type")
        spec = item.get("function") if nested else item
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ToolError(f"Missing required parameter: '{where}.name'.", f"{where}.name")
        parameters = spec.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise ToolError(f"Invalid type for '{where}.parameters'.", f"{where}.parameters")
        tools.append(Tool(spec["name"], parameters))
    return tuple(tools)


def _named(choice: dict[str, Any], nested: bool) -> str | None:
    spec = choice.get("function") if nested else choice
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) else None


def chosen_tool(tools: tuple[Tool, ...], choice: object, prompt: str, nested: bool) -> Tool | None:
    """The tool this request calls, or None for a text reply (see the module doc)."""
    if not tools or choice == "none":
        return None
    if choice == "required":
        return tools[0]
    if isinstance(choice, dict):
        name = _named(choice, nested)
        found = [tool for tool in tools if tool.name == name]
        if not found:
            raise ToolError(f"tool_choice names no tool given: {name!r}.", "tool_choice")
        return found[0]
    if choice not in (None, "auto"):
        raise ToolError(f"Invalid value for 'tool_choice': {choice!r}.", "tool_choice")
    words = set(keywords(prompt))
    for tool in tools:
        parts = [p.lower() for p in re.split(r"[_\W]+", tool.name) if p]
        if parts and all(part in words for part in parts):
            return tool
    return None
