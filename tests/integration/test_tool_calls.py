"""Tool calls on both backends: stored as canonical name + arguments, compared as such;
image_url parts pass through to the endpoint and stay in the stored body."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import sql
from tests.replaykit import invoke

PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def _file(tmp_path: Path, name: str, tool: str) -> Path:
    chat_tools = [{"type": "function", "function": {"name": tool, "parameters": PARAMETERS}}]
    lines = [
        {"custom_id": "chat-call", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "seed": 5, "tools": chat_tools, "tool_choice": "required",
                  "messages": [{"role": "user", "content": [
                      {"type": "text", "text": "Get the weather for Paris."}, IMAGE]}]}},
        {"custom_id": "resp-call", "method": "POST", "url": "/v1/responses",
         "body": {"model": "m", "input": "Paris, please.", "tool_choice": "required",
                  "temperature": 0,
                  "tools": [{"type": "function", "name": tool, "parameters": PARAMETERS}]}},
    ]  # fmt: skip
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def test_tool_calls_are_stored_and_compared(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(db_url, "run", str(_file(tmp_path, "calls.jsonl", "get_weather")),
                          "--endpoint", "local")  # fmt: skip
    assert code == 0, err
    stored = dict(sql(db_url, "SELECT job_key, tool_calls FROM run_results"))
    for key in ("chat-call", "resp-call"):
        (call,) = json.loads(stored[key])
        assert call["name"] == "get_weather"
        assert isinstance(call["arguments"], dict) and set(call["arguments"]) == {"city", "days"}
        # canonical JSON: sorted keys, no spaces
        assert stored[key] == json.dumps(json.loads(stored[key]), sort_keys=True,
                                         separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    ((body,),) = sql(db_url, "SELECT body FROM jobs WHERE key = 'chat-call'")
    assert IMAGE in json.loads(body)["messages"][0]["content"]  # passed through, stored

    code, _, err = invoke(db_url, "replay", "calls", "--work")
    assert code == 0, err
    code, out, _ = invoke(db_url, "compare", "calls", "--format", "json")
    items = {item["key"]: item for item in json.loads(out)["items"]}
    assert items["chat-call"]["exact_match"] is True  # seeded: the same call
    assert items["resp-call"]["exact_match"] is True  # greedy: the same call

    # Another function name: the same arguments, not the same call.
    code, _, err = invoke(db_url, "run", str(_file(tmp_path, "renamed.jsonl", "get_forecast")),
                          "--endpoint", "local")  # fmt: skip
    assert code == 0, err
    code, out, _ = invoke(db_url, "compare", "calls", "renamed", "--format", "json")
    items = {item["key"]: item for item in json.loads(out)["items"]}
    assert items["chat-call"]["exact_match"] is False
    assert 0 < items["chat-call"]["similarity"] < 1
    code, out, _ = invoke(db_url, "show", "renamed", "chat-call")
    assert 'tool calls: [{"arguments":' in out and '"name":"get_forecast"' in out
