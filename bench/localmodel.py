"""Benchmark of the built-in local model: completions per second, alone and via the SDK.

Prints machine facts and three figures for 64-token completions at temperature 0.8:
the model alone (``LanguageModel.generate``), the protocol core (``LocalModelService.handle``:
JSON in, validation, seeding, JSON out) and the real ``openai`` SDK over the in-process
``LocalTransport``. Also the slower general path (logprobs + penalties). The process is
pinned to one CPU where the OS allows it. Run: ``python bench/localmodel.py [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai

from runner.localmodel.model import SamplingParams, load_model
from runner.localmodel.service import LocalModelService
from runner.localmodel.transport import LOCAL_BASE_URL, LocalTransport

PROMPT = "Generate a short excerpt of news about a journey to Mars."
TOKENS = 64


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pin_to_one_cpu() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned"


def rate(step: Callable[[int], int], seconds: float) -> tuple[float, float]:
    """Calls per second and mean completion tokens of ``step(i) -> tokens``."""
    for index in range(200):  # warm the memoised distributions
        step(index)
    calls, tokens = 0, 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            tokens += step(calls)
            calls += 1
    elapsed = time.perf_counter() - started
    return calls / elapsed, tokens / calls


def model_alone(seconds: float, **extra: Any) -> tuple[float, float]:
    model = load_model()
    params = SamplingParams(temperature=0.8, max_tokens=TOKENS, **extra)

    def step(index: int) -> int:
        return model.generate(PROMPT, params, random.Random(index)).completion_tokens

    return rate(step, seconds)


def body(seed: int) -> dict[str, Any]:
    return {
        "model": "seed-runner-local",
        "messages": [{"role": "user", "content": PROMPT}],
        "seed": seed,
        "temperature": 0.8,
        "max_tokens": TOKENS,
    }


def service_core(seconds: float) -> tuple[float, float]:
    service = LocalModelService()

    def step(index: int) -> int:
        answer = service.handle("POST", "/v1/chat/completions", json.dumps(body(index)).encode())
        return int(json.loads(answer.body)["usage"]["completion_tokens"])

    return rate(step, seconds)


async def through_sdk(seconds: float, concurrency: int) -> tuple[float, float]:
    http = httpx2.AsyncClient(transport=LocalTransport(LocalModelService()))
    async with openai.AsyncOpenAI(
        base_url=LOCAL_BASE_URL, api_key="local", max_retries=0, http_client=http
    ) as client:

        async def one(seed: int) -> int:
            completion = await client.chat.completions.create(**body(seed))
            assert completion.usage is not None
            return int(completion.usage.completion_tokens)

        await asyncio.gather(*(one(seed) for seed in range(100)))
        calls, tokens = 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            results = await asyncio.gather(*(one(calls + i) for i in range(concurrency)))
            calls += concurrency
            tokens += sum(results)
        elapsed = time.perf_counter() - started
    return calls / elapsed, tokens / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each figure")
    args = parser.parse_args()
    pinning = pin_to_one_cpu()
    print(f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs ({pinning})")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"openai SDK: {openai.__version__}")
    print(f"completions of {TOKENS} tokens, temperature 0.8, prompt {PROMPT!r}")
    figures = [
        ("model alone (plain path)", model_alone(args.seconds)),
        (
            "model alone (logprobs + penalties)",
            model_alone(args.seconds, top_logprobs=5, presence_penalty=0.5),
        ),
        ("service.handle (JSON in/out)", service_core(args.seconds)),
        ("openai SDK in-process, sequential", asyncio.run(through_sdk(args.seconds, 1))),
        ("openai SDK in-process, 32 concurrent", asyncio.run(through_sdk(args.seconds, 32))),
    ]
    for label, (per_second, mean_tokens) in figures:
        print(
            f"{label:38s} {per_second:10,.0f} completions/s"
            f"  ({per_second * mean_tokens:12,.0f} tokens/s, mean {mean_tokens:.1f} tokens)"
        )


if __name__ == "__main__":
    main()
