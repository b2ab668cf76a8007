"""Tool calls of the local model, chat and responses, through the real SDK."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.anyio

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
}
CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}
]
ASK = [{"role": "user", "content": "Get the weather for Paris, please."}]


async def test_chat_calls_the_tool_named_in_the_prompt(client: openai.AsyncOpenAI) -> None:
    async def call() -> Any:
        completion = await client.chat.completions.create(
            model="m",
            messages=ASK,
            seed=2,
            tools=CHAT_TOOLS,  # type: ignore[arg-type]
        )
        assert completion.choices[0].finish_reason == "tool_calls"
        (tool_call,) = completion.choices[0].message.tool_calls or []
        return tool_call.function  # type: ignore[union-attr]

    first = await call()
    assert first.name == "get_weather"
    jsonschema.validate(json.loads(first.arguments), PARAMETERS)
    assert (await call()).arguments == first.arguments  # seeded: the same call


async def test_none_and_unnamed_tools_give_text(client: openai.AsyncOpenAI) -> None:
    for choice, messages in (("none", ASK), ("auto", [{"role": "user", "content": "Hi"}])):
        completion = await client.chat.completions.create(
            model="m", messages=messages, tools=CHAT_TOOLS, tool_choice=choice,  # type: ignore[arg-type]
            max_tokens=10,
        )  # fmt: skip
        assert completion.choices[0].message.tool_calls is None
        assert completion.choices[0].message.content


async def test_responses_function_call_item(client: openai.AsyncOpenAI) -> None:
    tool = {"type": "function", "name": "lookup", "parameters": PARAMETERS, "strict": True}
    response = await client.responses.create(
        model="m",
        input="Anything",
        tools=[tool],
        tool_choice="required",  # type: ignore[list-item]
    )
    (item,) = response.output
    assert item.type == "function_call" and item.name == "lookup"
    jsonschema.validate(json.loads(item.arguments), PARAMETERS)


async def test_tool_choice_naming_a_missing_tool_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="m", messages=ASK, tools=CHAT_TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )  # fmt: skip
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "tool_choice"
