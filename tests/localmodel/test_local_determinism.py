"""The seed promise: same body, same text, in any process, order or concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import anyio
import openai
import pytest

from runner.localmodel.service import LocalModelService

MARS = "Generate a short excerpt of news about a journey to Mars."

REQUESTS: list[dict[str, Any]] = [
    {"seed": 123, "temperature": 0.7, "max_tokens": 80},
    {"seed": 123, "temperature": 0, "max_tokens": 200},
    {"seed": 7, "temperature": 1.3, "top_p": 0.9, "n": 3, "max_tokens": 40},
    {"seed": 99, "presence_penalty": 0.8, "frequency_penalty": 0.4, "max_tokens": 60},
    {"seed": 5, "logprobs": True, "top_logprobs": 2, "max_tokens": 10},
    {"seed": 2**40, "stop": [" the"], "max_tokens": 100},
    {
        "seed": 11,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "JSON please: a cooking tip"}],
        "max_tokens": 30,
    },
]

# Runs in a fresh interpreter: the real SDK over LocalTransport, requests in reverse order.
CHILD = """
import asyncio, json, sys
import httpx2, openai
from runner.localmodel.service import LocalModelService
from runner.localmodel.transport import LOCAL_BASE_URL, LocalTransport

async def main():
    bodies = json.loads(sys.stdin.read())
    http = httpx2.AsyncClient(transport=LocalTransport(LocalModelService()))
    async with openai.AsyncOpenAI(
        base_url=LOCAL_BASE_URL, api_key="local", max_retries=0, http_client=http
    ) as client:
        results = [None] * len(bodies)
        for index in reversed(range(len(bodies))):
            completion = await client.chat.completions.create(**bodies[index])
            results[index] = [c.model_dump(mode="json") for c in completion.choices]
    print(json.dumps(results))

asyncio.run(main())
"""


def bodies() -> list[dict[str, Any]]:
    return [
        {"model": "m", "messages": [{"role": "user", "content": MARS}], **request}
        for request in REQUESTS
    ]


def run_child(hash_seed: str) -> list[Any]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(bodies()),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_two_processes_with_different_hash_seeds_give_identical_choices() -> None:
    first, second = run_child("0"), run_child("4242")
    assert first == second
    # and the texts are real, varied completions
    texts = [choice["message"]["content"] for choices in first for choice in choices]
    assert len(set(texts)) == len(texts)
    assert all(len(text) > 10 for text in texts)


@pytest.mark.anyio
async def test_this_process_concurrently_and_shuffled_matches_a_child_process(
    service: LocalModelService, client: openai.AsyncOpenAI
) -> None:
    reference = run_child("1")
    requests = bodies()
    results: list[Any] = [None] * len(requests)

    async def one(index: int) -> None:
        completion = await client.chat.completions.create(**requests[index])
        results[index] = [c.model_dump(mode="json") for c in completion.choices]

    # warm other contexts first, so memoised state differs from the child's
    for seed in range(20):
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "weather and bread"}], seed=seed
        )
    async with anyio.create_task_group() as group:
        for index in (3, 0, 6, 1, 5, 2, 4):
            group.start_soon(one, index)
    assert results == reference
