"""Every parameter through the real openai SDK, in-process (LocalTransport) and over HTTP."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

from runner.localmodel.service import MODEL_ID, LocalModelService
from runner.localmodel.tokenizer import count_tokens
from runner.localmodel.transport import LOCAL_BASE_URL, LocalSyncTransport

pytestmark = pytest.mark.anyio

MARS = "Generate a short excerpt of news about a journey to Mars."


async def create(client: openai.AsyncOpenAI, **params: Any) -> ChatCompletion:
    params.setdefault("model", "gpt-4o-mini")
    params.setdefault("messages", [{"role": "user", "content": MARS}])
    return await client.chat.completions.create(**params)


def text(completion: ChatCompletion, index: int = 0) -> str:
    content = completion.choices[index].message.content
    assert content is not None
    return content


async def test_seed_reproduces_the_text_and_reports_the_fingerprint(
    client: openai.AsyncOpenAI, service: LocalModelService
) -> None:
    first = await create(client, seed=123, temperature=0.7, max_tokens=60)
    second = await create(client, seed=123, temperature=0.7, max_tokens=60)
    assert text(first) == text(second)
    assert first.system_fingerprint == second.system_fingerprint == service.system_fingerprint
    assert first.model == "gpt-4o-mini"
    assert first.object == "chat.completion"
    assert first.id.startswith("chatcmpl-")


async def test_both_transports_give_the_same_seeded_text(
    client: openai.AsyncOpenAI, service: LocalModelService
) -> None:
    # The reference is computed without any transport.
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": MARS}],
        "seed": 5,
        "max_tokens": 30,
    }
    reference = json.loads(
        service.handle("POST", "/v1/chat/completions", json.dumps(body).encode()).body
    )
    assert (
        text(await create(client, seed=5, max_tokens=30))
        == reference["choices"][0]["message"]["content"]
    )


async def test_without_seed_outputs_vary(client: openai.AsyncOpenAI) -> None:
    outputs = {text(await create(client, temperature=1.0, max_tokens=30)) for _ in range(4)}
    assert len(outputs) == 4


async def test_temperature_zero_is_deterministic_without_seed(client: openai.AsyncOpenAI) -> None:
    outputs = {text(await create(client, temperature=0, max_tokens=40)) for _ in range(3)}
    assert len(outputs) == 1


async def test_temperature_changes_the_draw(client: openai.AsyncOpenAI) -> None:
    cold = await create(client, seed=1, temperature=0.2, max_tokens=40)
    hot = await create(client, seed=1, temperature=1.8, max_tokens=40)
    assert text(cold) != text(hot)


async def test_top_p(client: openai.AsyncOpenAI) -> None:
    narrow = await create(client, seed=2, top_p=0.0, max_tokens=40)
    wide = await create(client, seed=2, top_p=1.0, max_tokens=40)
    # top_p=0 keeps only the most likely token, so the draw no longer matters
    assert text(narrow) == text(await create(client, seed=3, top_p=0.0, max_tokens=40))
    assert text(narrow) != text(wide)


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_ends_with_length(client: openai.AsyncOpenAI, key: str) -> None:
    completion = await create(client, seed=4, **{key: 7})
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 7
    longer = await create(client, seed=4, **{key: 50})
    assert text(longer).startswith(text(completion))


async def test_natural_end_is_finish_reason_stop(
    client: openai.AsyncOpenAI, service: LocalModelService
) -> None:
    # find a seed whose text ends by itself, without any transport
    for seed in range(200):
        body = {"model": "m", "messages": [{"role": "user", "content": MARS}], "seed": seed}
        payload = json.loads(
            service.handle("POST", "/chat/completions", json.dumps(body).encode()).body
        )
        if payload["choices"][0]["finish_reason"] == "stop":
            break
    else:
        pytest.fail("no natural end in 200 seeds")
    completion = await create(client, seed=seed)
    assert completion.choices[0].finish_reason == "stop"
    assert text(completion).endswith(".")
    assert completion.usage is not None
    assert completion.usage.completion_tokens < 1024


@pytest.mark.parametrize("stop", [" the", [" the", "Mars", "crew"]])
async def test_stop(client: openai.AsyncOpenAI, stop: str | list[str]) -> None:
    free = text(await create(client, seed=6, max_tokens=200))
    stopped = await create(client, seed=6, max_tokens=200, stop=stop)
    stops = [stop] if isinstance(stop, str) else stop
    cut = min(i for i in (free.find(s) for s in stops) if i >= 0)
    assert text(stopped) == free[:cut]
    assert stopped.choices[0].finish_reason == "stop"


async def test_n_choices_differ_and_each_is_reproducible(client: openai.AsyncOpenAI) -> None:
    first = await create(client, seed=7, n=3, max_tokens=30)
    again = await create(client, seed=7, n=3, max_tokens=30)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len({text(first, i) for i in range(3)}) == 3
    assert [text(first, i) for i in range(3)] == [text(again, i) for i in range(3)]
    # usage counts every choice: 30 tokens each, fewer for one that ended by itself
    counts = [count_tokens(text(first, i)) for i in range(3)]
    assert all(count <= 30 for count in counts)
    assert first.usage is not None and first.usage.completion_tokens == sum(counts)


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
async def test_penalties(client: openai.AsyncOpenAI, penalty: str) -> None:
    plain = text(await create(client, temperature=0, max_tokens=120))
    penalised = text(await create(client, temperature=0, max_tokens=120, **{penalty: 1.5}))
    assert penalised != plain

    def repeats(t: str) -> float:
        return 1 - len(set(t.split())) / len(t.split())

    assert repeats(penalised) < repeats(plain)


async def test_logprobs_and_top_logprobs(client: openai.AsyncOpenAI) -> None:
    completion = await create(client, seed=8, max_tokens=15, logprobs=True, top_logprobs=4)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert "".join(entry.token for entry in logprobs.content) == text(completion)
    for entry in logprobs.content:
        assert entry.logprob <= 0.0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 4
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert math.fsum(math.exp(v) for v in values) <= 1.0 + 1e-9
    without = await create(client, seed=8, max_tokens=15)
    assert without.choices[0].logprobs is None
    assert text(without) == text(completion)


async def test_json_object_response_format(client: openai.AsyncOpenAI) -> None:
    completion = await create(
        client,
        seed=9,
        max_tokens=40,
        messages=[{"role": "user", "content": "Reply as JSON: news about a journey to Mars"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(text(completion))["text"], str)
    plain = await create(client, seed=9, max_tokens=40, response_format={"type": "text"})
    assert not text(plain).startswith("{")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"frequency_penalty": 9}, "frequency_penalty"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"extra_body": {"frobnicate": True}}, "frobnicate"),
    ],
)
async def test_bad_parameters_raise_bad_request(
    client: openai.AsyncOpenAI, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await create(client, **params)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


async def test_stream_is_refused_in_process(
    service: LocalModelService,
    make_inprocess_client: Callable[[LocalModelService], openai.AsyncOpenAI],
) -> None:
    # In-process, as the runner sends: whole responses only (runner serve streams).
    async with make_inprocess_client(service) as client:
        with pytest.raises(openai.BadRequestError, match="not supported"):
            await create(client, stream=True)


async def test_missing_model_is_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post(
            "/chat/completions",
            body={"messages": [{"role": "user", "content": "x"}]},
            cast_to=object,
        )
    assert caught.value.param == "model"


async def test_unknown_route_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="m", prompt="hello")


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    # The SDK asks for base64 by default and decodes it; an explicit float skips that.
    default = await client.embeddings.create(
        model="text-embedding-3-small", input=["a journey to Mars", "bread"]
    )
    floats = await client.embeddings.create(
        model="text-embedding-3-small",
        input=["a journey to Mars", "bread"],
        encoding_format="float",
    )
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data[0].embedding) == 256
    assert default.usage.prompt_tokens == 5
    short = await client.embeddings.create(model="e", input="x", dimensions=32)
    assert len(short.data[0].embedding) == 32


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert models.data[0].owned_by == "seed-runner"
    assert (await client.models.retrieve(MODEL_ID)).id == MODEL_ID


async def test_sync_transport_gives_the_async_text(client: openai.AsyncOpenAI) -> None:
    expected = text(await create(client, seed=21, max_tokens=25))
    service = LocalModelService()
    http = httpx2.Client(transport=LocalSyncTransport(service))
    with openai.OpenAI(
        base_url=LOCAL_BASE_URL, api_key="local", max_retries=0, http_client=http
    ) as sync_client:
        completion = sync_client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": MARS}], seed=21, max_tokens=25
        )
    assert completion.choices[0].message.content == expected


async def test_image_url_parts_pass_and_only_the_text_is_read(client: openai.AsyncOpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_image = await create(
        client,
        messages=[{"role": "user", "content": [{"type": "text", "text": MARS}, image]}],
        seed=4,
        max_tokens=20,
    )
    plain = await create(client, seed=4, max_tokens=20)
    assert text(with_image) == text(plain)
