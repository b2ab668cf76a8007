"""The protocol core without any transport: routes, shapes, validation, seeding."""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from typing import Any

import pytest

from runner.localmodel.service import CONTEXT_WINDOW, MODEL_ID, LocalModelService

MARS = "Generate a short excerpt of news about a journey to Mars."


def call(service: LocalModelService, body: Any, path: str = "/v1/chat/completions") -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = service.handle("POST", path, raw)
    return response.status, json.loads(response.body)


def chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": MARS}],
        "seed": 123,
        "max_tokens": 40,
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not None}


def texts(payload: dict[str, Any]) -> list[str]:
    return [choice["message"]["content"] for choice in payload["choices"]]


def test_chat_completion_has_openais_shape(service: LocalModelService) -> None:
    response = service.handle("POST", "/v1/chat/completions", json.dumps(chat()).encode())
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"].startswith("req_")
    payload = json.loads(response.body)
    assert payload["id"].startswith("chatcmpl-")
    assert payload["object"] == "chat.completion"
    assert isinstance(payload["created"], int)
    assert payload["model"] == "gpt-4o-mini"
    assert re.fullmatch(r"fp_[0-9a-f]{10}", payload["system_fingerprint"])
    assert payload["system_fingerprint"] == service.system_fingerprint
    [choice] = payload["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["refusal"] is None
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    usage = payload["usage"]
    assert usage["completion_tokens"] == 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_same_seeded_body_same_text_but_fresh_ids(service: LocalModelService) -> None:
    first = call(service, chat(temperature=0.9, n=3))[1]
    second = call(service, chat(temperature=0.9, n=3))[1]
    assert texts(first) == texts(second)
    assert first["id"] != second["id"]


def test_unseeded_bodies_differ(service: LocalModelService) -> None:
    outputs = {texts(call(service, chat(seed=None))[1])[0] for _ in range(5)}
    assert len(outputs) == 5


def test_n_choices_differ_and_choice_zero_is_stable(service: LocalModelService) -> None:
    many = texts(call(service, chat(n=4))[1])
    assert len(set(many)) == 4
    assert texts(call(service, chat(n=1))[1]) == many[:1]


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"seed": 124}, False),
        ({"temperature": 0.5}, False),
        ({"top_p": 0.9}, False),
        ({"messages": [{"role": "user", "content": MARS + " "}]}, False),
        (
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": MARS},
                ]
            },
            False,
        ),
        ({"presence_penalty": 0.5}, False),
        ({"temperature": 1}, True),  # 1 and 1.0 are the same number
        ({"model": "another-name"}, True),
        ({"user": "someone", "metadata": {"k": "v"}, "store": False}, True),
    ],
)
def test_what_enters_the_seed(
    service: LocalModelService, change: dict[str, Any], same: bool
) -> None:
    base = texts(call(service, chat(max_tokens=60))[1])
    changed = texts(call(service, chat(max_tokens=60, **change))[1])
    assert (changed == base) is same


def test_text_and_list_content_parts_are_the_same_prompt(service: LocalModelService) -> None:
    parts = [
        {"type": "text", "text": "Generate a short excerpt of news "},
        {"type": "text", "text": "about a journey to Mars."},
    ]
    as_parts = call(service, chat(messages=[{"role": "user", "content": parts}]))[1]
    assert texts(as_parts) == texts(call(service, chat())[1])


def test_stop_sequences(service: LocalModelService) -> None:
    free = texts(call(service, chat(max_tokens=200))[1])[0]
    status, payload = call(service, chat(max_tokens=200, stop=[" the", "Mars"]))
    assert status == 200
    cut = min(i for i in (free.find(" the"), free.find("Mars")) if i >= 0)
    assert texts(payload) == [free[:cut]]
    assert payload["choices"][0]["finish_reason"] == "stop"


def test_max_completion_tokens_is_max_tokens(service: LocalModelService) -> None:
    a = call(service, chat(max_tokens=None, max_completion_tokens=17))[1]
    assert a["usage"]["completion_tokens"] == 17
    assert texts(a) == texts(call(service, chat(max_tokens=17))[1])


def test_json_object_mode_returns_valid_json(service: LocalModelService) -> None:
    body = chat(
        messages=[{"role": "user", "content": "Answer in JSON: news about Mars"}],
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
        max_tokens=30,
    )
    payload = call(service, body)[1]
    content = payload["choices"][0]["message"]["content"]
    assert set(json.loads(content)) == {"text"}
    tokens = payload["choices"][0]["logprobs"]["content"]
    assert "".join(entry["token"] for entry in tokens) == content
    assert payload["usage"]["completion_tokens"] == len(tokens) <= 30


def test_logprobs_format(service: LocalModelService) -> None:
    payload = call(service, chat(logprobs=True, top_logprobs=3, max_tokens=12))[1]
    content = payload["choices"][0]["logprobs"]["content"]
    assert len(content) == 12
    assert "".join(entry["token"] for entry in content) == texts(payload)[0]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert bytes(entry["bytes"]).decode() == entry["token"]
        assert len(entry["top_logprobs"]) == 3
        assert all(set(alt) == {"token", "logprob", "bytes"} for alt in entry["top_logprobs"])
    without_top = call(service, chat(logprobs=True, max_tokens=5))[1]
    assert all(e["top_logprobs"] == [] for e in without_top["choices"][0]["logprobs"]["content"])


BAD_PARAMS = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.1}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"max_completion_tokens": 5}, "max_tokens"),  # both set
    ({"n": 0}, "n"),
    ({"n": 129}, "n"),
    ({"seed": "abc"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {}}},
        "response_format.json_schema",
    ),
    ({"response_format": {"type": "json_object"}}, "messages"),  # no "json" in messages
    ({"stream": True}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"model": None}, "model"),
    ({"model": 7}, "model"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.[0].role"),
    ({"messages": [{"role": "user"}]}, "messages.[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.[0].content"),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        "messages.[0].content.[0].type",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages.[0].content.[0].image_url",
    ),
    ({"messages": [{"role": "user", "content": "hi", "colour": 1}]}, "messages.[0].colour"),
    ({"service_tier": "gold"}, "service_tier"),
    ({"frobnicate": 1}, "frobnicate"),
]


@pytest.mark.parametrize(("change", "param"), BAD_PARAMS)
def test_bad_parameters_are_400_naming_the_parameter(
    service: LocalModelService, change: dict[str, Any], param: str
) -> None:
    body = chat()
    body.update(change)
    status, payload = call(service, {k: v for k, v in body.items() if v is not None})
    assert status == 400, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_unknown_argument_message_matches_openai(service: LocalModelService) -> None:
    payload = call(service, chat(frobnicate=1))[1]
    assert payload["error"]["message"] == "Unrecognized request argument supplied: frobnicate"


def test_stream_is_refused_with_a_clear_message(service: LocalModelService) -> None:
    payload = call(service, chat(stream=True))[1]
    assert (
        "stream" in payload["error"]["message"] and "not supported" in payload["error"]["message"]
    )


def test_harmless_known_parameters_are_accepted(service: LocalModelService) -> None:
    status, _ = call(
        service,
        chat(
            user="u1",
            metadata={"run": "7"},
            store=False,
            service_tier="auto",
            parallel_tool_calls=True,
            stream=False,
            tool_choice="none",
            logit_bias={},
            response_format={"type": "text"},
            prompt_cache_key="k",
        ),
    )
    assert status == 200


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2]", b"NaN", b'{"model": NaN}', b"\xff"])
def test_invalid_json_is_400(service: LocalModelService, body: bytes) -> None:
    status, payload = call(service, body)
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"


def test_context_window(service: LocalModelService) -> None:
    long = "word " * CONTEXT_WINDOW
    status, payload = call(service, chat(messages=[{"role": "user", "content": long}]))
    assert status == 400
    assert payload["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/v1/models/"])
def test_models_list(service: LocalModelService, path: str) -> None:
    response = service.handle("GET", path, b"")
    assert response.status == 200
    payload = json.loads(response.body)
    assert payload["object"] == "list"
    assert payload["data"] == [
        {
            "id": MODEL_ID,
            "object": "model",
            "created": payload["data"][0]["created"],
            "owned_by": "seed-runner",
        }
    ]
    assert json.loads(service.handle("GET", f"/v1/models/{MODEL_ID}", b"").body)["id"] == MODEL_ID
    assert service.handle("GET", "/v1/models/gpt-9", b"").status == 404


def test_both_path_prefixes_route_to_chat(service: LocalModelService) -> None:
    assert texts(call(service, chat(), "/chat/completions")[1]) == texts(call(service, chat())[1])


def test_unknown_route_is_404_and_wrong_method_405(service: LocalModelService) -> None:
    missing = service.handle("POST", "/v1/completions/legacy", b"{}")
    assert missing.status == 404
    assert (
        json.loads(missing.body)["error"]["message"] == "Invalid URL (POST /v1/completions/legacy)"
    )
    wrong = service.handle("GET", "/v1/chat/completions", b"")
    assert wrong.status == 405
    assert wrong.headers["allow"] == "POST"
    assert json.loads(wrong.body)["error"]["type"] == "invalid_request_error"
    assert service.handle("POST", "/v1/models", b"").status == 405


def test_variant_changes_fingerprint_and_outputs(service: LocalModelService) -> None:
    other = LocalModelService(variant="backend-2026-11")
    assert other.system_fingerprint != service.system_fingerprint
    assert (
        other.system_fingerprint == LocalModelService(variant="backend-2026-11").system_fingerprint
    )
    for overrides in ({}, {"temperature": 0}):
        a, b = (
            call(service, chat(max_tokens=80, **overrides))[1],
            call(other, chat(max_tokens=80, **overrides))[1],
        )
        assert texts(a) != texts(b)
        assert b["system_fingerprint"] == other.system_fingerprint


def test_estimate_tokens_charges_prompt_plus_max_tokens_times_n(service: LocalModelService) -> None:
    body = json.dumps(chat(max_tokens=50, n=3)).encode()
    _status, payload = call(service, json.loads(body))
    prompt = payload["usage"]["prompt_tokens"]
    assert service.estimate_tokens("POST", "/v1/chat/completions", body) == prompt + 150
    assert service.estimate_tokens("POST", "/v1/chat/completions", b"garbage") == 0


def embed(service: LocalModelService, **body: Any) -> dict[str, Any]:
    status, payload = call(service, {"model": "text-embedding-3-small", **body}, "/v1/embeddings")
    assert status == 200, payload
    return payload  # type: ignore[no-any-return]


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_shape_norm_and_similarity(service: LocalModelService) -> None:
    inputs = [
        "The crew left for Mars on a long journey.",
        "A crew began the long journey to Mars.",
        "Knead the dough and bake the bread in a hot oven.",
    ]
    payload = embed(service, input=inputs)
    assert payload["object"] == "list" and payload["model"] == "text-embedding-3-small"
    assert payload["usage"]["prompt_tokens"] == payload["usage"]["total_tokens"] > 0
    vectors = [item["embedding"] for item in payload["data"]]
    assert [item["index"] for item in payload["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in payload["data"])
    assert all(len(v) == 256 and abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > 0.3 > cosine(vectors[0], vectors[2])
    assert embed(service, input=inputs[0])["data"][0]["embedding"] == vectors[0]


def test_embeddings_base64_and_dimensions(service: LocalModelService) -> None:
    floats = embed(service, input="hello world", encoding_format="float")["data"][0]["embedding"]
    encoded = embed(service, input="hello world", encoding_format="base64")["data"][0]["embedding"]
    decoded = list(struct.unpack("<256f", base64.b64decode(encoded)))
    assert decoded == floats
    assert len(embed(service, input="hello", dimensions=64)["data"][0]["embedding"]) == 64


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": None}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 1000}, "dimensions"),
        ({"input": "x", "extra": 1}, "extra"),
    ],
)
def test_embedding_errors(service: LocalModelService, body: dict[str, Any], param: str) -> None:
    status, payload = call(service, {"model": "e", **body}, "/v1/embeddings")
    assert status == 400
    assert payload["error"]["param"] == param


def test_the_system_prompt_and_earlier_turns_condition_the_text(
    service: LocalModelService,
) -> None:
    """At temperature 0 the seed plays no part: only what the model reads can move the text."""
    user = [{"role": "user", "content": "Tell me more."}]
    bare = texts(call(service, chat(messages=user, temperature=0, max_tokens=60))[1])
    system = [{"role": "system", "content": "You write about baking bread and soup."}]
    steered = texts(call(service, chat(messages=system + user, temperature=0, max_tokens=60))[1])
    earlier = [
        {"role": "user", "content": "How do I bake bread and soup?"},
        {"role": "assistant", "content": "Knead the dough."},
    ]
    turns = texts(call(service, chat(messages=earlier + user, temperature=0, max_tokens=60))[1])
    assert steered != bare and turns != bare
