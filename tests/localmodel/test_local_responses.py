"""The local model's ``/v1/responses`` through the real openai SDK, in-process and over HTTP."""

from __future__ import annotations

import json

import openai
import pytest

from runner.localmodel.service import LocalModelService

pytestmark = pytest.mark.anyio

MARS = "Generate a short excerpt of news about a journey to Mars."


async def test_a_response_is_the_chat_draw_with_usage_details(
    client: openai.AsyncOpenAI,
) -> None:
    # Temperature 0 is greedy, so both APIs must draw the very same text from one prompt.
    chat = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": MARS},
        ],
        temperature=0,
        max_tokens=40,
    )
    response = await client.responses.create(
        model="gpt-4o-mini",
        instructions="Be brief.",
        input=MARS,
        temperature=0,
        max_output_tokens=40,
    )
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.model == "gpt-4o-mini"
    assert response.output_text == chat.choices[0].message.content
    assert response.instructions == "Be brief."
    assert response.service_tier == "default"
    usage = response.usage
    assert usage is not None and chat.usage is not None
    assert usage.input_tokens == chat.usage.prompt_tokens
    assert usage.output_tokens == chat.usage.completion_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


async def test_a_reply_cut_by_max_output_tokens_is_incomplete(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="m", input=[{"role": "user", "content": MARS}], max_output_tokens=16
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 16
    assert response.output[0].type == "message" and response.output[0].status == "incomplete"


async def test_a_finished_reply_is_completed(client: openai.AsyncOpenAI) -> None:
    for _ in range(20):  # unseeded draws: some end before the limit
        response = await client.responses.create(model="m", input=MARS, max_output_tokens=400)
        if response.status == "completed":
            assert response.incomplete_details is None
            return
    pytest.fail("no draw ended within 400 tokens")


async def test_unseeded_responses_vary(client: openai.AsyncOpenAI) -> None:
    texts = {
        (await client.responses.create(model="m", input=MARS, max_output_tokens=30)).output_text
        for _ in range(4)
    }
    assert len(texts) == 4


async def test_seed_is_refused_as_an_unknown_parameter(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="m", input=MARS, extra_body={"seed": 1})
    assert caught.value.status_code == 400
    assert "Unrecognized request argument supplied: seed" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "seed"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_output_tokens": 8}, "max_output_tokens"),
        ({"input": 3}, "input"),
        ({"instructions": ["x"]}, "instructions"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"temperature": 3}, "temperature"),
    ],
)
async def test_bad_parameters_name_the_field(
    client: openai.AsyncOpenAI, params: dict[str, object], param: str
) -> None:
    body: dict[str, object] = {"model": "m", "input": MARS, **params}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/responses", body=body, cast_to=object)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == param


async def test_json_object_format_and_image_parts(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="m",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Describe this picture of Mars as json."},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                ],
            }
        ],
        text={"format": {"type": "json_object"}},
        max_output_tokens=30,
    )
    assert set(json.loads(response.output_text)) == {"text"}


def test_the_body_without_a_transport(service: LocalModelService) -> None:
    body = json.dumps({"model": "m", "input": MARS, "max_output_tokens": 20}).encode()
    answer = service.handle("POST", "/v1/responses", body)
    assert answer.status == 200
    data = json.loads(answer.body)
    assert "system_fingerprint" not in data  # the Responses API has none
    assert service.estimate_tokens("POST", "/v1/responses", body) == (
        data["usage"]["input_tokens"] + 20
    )
