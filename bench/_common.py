"""Helpers shared by the benchmark scripts: machine facts, servers, job files, peak RSS."""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

RUNNER = [sys.executable, "-m", "runner"]
WORDS = (  # noqa: SIM905 - a sentence is easier to read than 26 quoted words
    "mars rover orbit crew launch signal dust storm crater ice water fuel rocket module "
    "engine landing station planet solar panel habitat oxygen tide ocean bread weather"
).split()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{datetime.date.today()} | {platform.system()} {platform.release()} "
        f"{platform.machine()} | {cpu} | {os.cpu_count()} CPUs | Python "
        f"{platform.python_version()}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(*flags: str) -> Iterator[str]:
    """``runner serve`` in its own process (so it has its own core); yields the base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [*RUNNER, "serve", "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120  # six servers starting at once on a busy machine
    while True:
        try:
            httpx2.get(f"{url}/models", timeout=1)
            break
        except httpx2.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("runner serve did not start") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def write_jobs(path: Path, count: int, *, max_tokens: int, seed: int = 1) -> Path:
    """An OpenAI Batch file of ``count`` seeded requests with prompts of varied length."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(count):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
            body = {
                "model": "m",
                "seed": i,
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "messages": [{"role": "user", "content": f"Tell me about {words}."}],
            }
            out.write(
                json.dumps(
                    {
                        "custom_id": f"j{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + "\n"
            )
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
