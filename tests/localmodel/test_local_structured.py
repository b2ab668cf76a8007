"""json_schema structured outputs of the local model, chat and responses, through the SDK."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.anyio

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "headline": {"type": "string", "maxLength": 60},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 2},
        "source": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        "fresh": {"type": "boolean"},
    },
    "required": ["headline", "score", "tags", "source", "fresh"],
    "additionalProperties": False,
    "$defs": {"tag": {"type": "string", "enum": ["space", "news", "science"]}},
}
MARS = "News about a journey to Mars."


def chat_format(schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "news", "schema": schema, "strict": True},
    }


async def test_chat_json_schema_outputs_are_valid_and_seeded(client: openai.AsyncOpenAI) -> None:
    async def once() -> tuple[str, str | None]:
        completion = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": MARS}],
            seed=11,
            response_format=chat_format(),  # type: ignore[arg-type]
        )
        choice = completion.choices[0]
        assert choice.message.content is not None
        return choice.message.content, choice.finish_reason

    text, reason = await once()
    jsonschema.validate(json.loads(text), SCHEMA)
    assert reason == "stop"
    assert (await once())[0] == text  # seeded: the same document


async def test_responses_json_schema_and_a_cut_reply(client: openai.AsyncOpenAI) -> None:
    fmt = {"type": "json_schema", "name": "news", "schema": SCHEMA, "strict": True}
    whole = await client.responses.create(model="m", input=MARS, text={"format": fmt})  # type: ignore[typeddict-item]
    jsonschema.validate(json.loads(whole.output_text), SCHEMA)
    assert whole.status == "completed"
    assert whole.text is not None and whole.text.format is not None
    assert whole.text.format.type == "json_schema"
    cut = await client.responses.create(
        model="m",
        input=MARS,
        text={"format": fmt},
        max_output_tokens=16,  # type: ignore[typeddict-item]
    )
    assert cut.status == "incomplete"
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.output_text)  # cut short: broken JSON, invalid on demand


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (chat_format({"type": "nonsense"}), "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "response_format.json_schema"),
        ({"type": "json_schema"}, "response_format.json_schema"),
    ],
)
async def test_bad_schemas_are_refused(
    client: openai.AsyncOpenAI, response_format: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": MARS}],
            response_format=response_format,  # type: ignore[arg-type]
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == param
