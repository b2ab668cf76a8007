"""End-to-end throughput: latency hiding, and what the durable queue costs.

1. Latency hiding: ``runner serve --latency-ms 200`` and a worker with concurrency 256;
   requests per second over a batch. Target: >= 90 % of 256 / 0.2 s = 1,280 req/s.
   For scale, a bare loop of the same SDK calls to the same server (no queue, no
   database) shows what the client side alone reaches on this machine.
2. Durable-queue overhead: jobs/s end to end (submit excluded: claim, call, store) on
   SQLite with the in-process local endpoint, against a bare asyncio loop making the
   same SDK calls to the same endpoint with the same concurrency, no queue, no
   database; measured in this one run, alternately ``--repeat`` times (the bare loop
   alone moves by several per cent from one try to the next), and the median of the
   ratios reported. Target: queue >= 0.75 x bare.

The bare loops run twice: on the stock ``openai.AsyncOpenAI`` (a plain asyncio script of
SDK calls: the target's baseline) and on the runner's own SDK client, ``RunnerOpenAI``,
which builds each request's URL and headers once (so queue / that loop is the cost of
the queue and database alone). Both send the same bytes and read the response the same
way (``EndpointClient.chat``).

Run: ``python bench/throughput.py [--jobs 20000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai
from _common import machine, serve, write_jobs

from runner.config import EndpointConfig, load_settings
from runner.db import engine as db
from runner.endpoints.client import EndpointClient
from runner.submit import submit
from runner.work import Worker


async def queued_run(jobs: Path, url: str | None, concurrency: int, workdir: Path) -> float:
    """Jobs/s of submit-then-work, timing only the work."""
    db_url = f"sqlite:///{workdir / 'runner.db'}"
    db.ensure_schema(db_url)
    settings = load_settings(database_url=db_url)
    endpoint = "local"
    if url is not None:
        serve_cfg = EndpointConfig(name="serve", type="openai", base_url=url, timeout=60)
        settings = replace(settings, endpoints={**settings.endpoints, "serve": serve_cfg})
        endpoint = "serve"
    engine = db.create_engine_async(db_url, pool_size=8)
    try:
        sub = await submit(engine, jobs, settings, endpoint=endpoint)
        worker = Worker(
            engine, settings, concurrency=concurrency, burst=True, round_ids=[sub.round_id]
        )
        started = time.perf_counter()
        stats = await worker.run()
        elapsed = time.perf_counter() - started
        assert stats.succeeded == sub.job_count, stats
        return sub.job_count / elapsed
    finally:
        await engine.dispose()


class StockEndpointClient(EndpointClient):
    """The runner's endpoint client on the stock SDK class."""

    sdk_class = openai.AsyncOpenAI


async def bare_run(
    bodies: list[dict[str, object]], concurrency: int, url: str | None = None, *, stock: bool
) -> float:
    """The same SDK calls to the same endpoint (in-process, or ``url``): no queue, no database."""
    if url is None:
        config = EndpointConfig(name="local", type="local")
    else:
        config = EndpointConfig(name="serve", type="openai", base_url=url, timeout=60)
    client = (StockEndpointClient if stock else EndpointClient)(config)
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def loop() -> None:
        while not queue.empty():
            await client.chat(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return len(bodies) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = write_jobs(root / "jobs.jsonl", args.jobs, max_tokens=16)
        bodies = [json.loads(line)["body"] for line in jobs.read_text().splitlines()]
        with serve("--latency-ms", "200") as url:
            (root / "a").mkdir()
            rate = asyncio.run(queued_run(jobs, url, 256, root / "a"))
            stock = asyncio.run(bare_run(bodies, 256, url, stock=True))
            ours = asyncio.run(bare_run(bodies, 256, url, stock=False))
        print(
            f"latency hiding: {rate:,.0f} req/s with 200 ms latency and concurrency 256 "
            f"({rate / 1280:.0%} of 1,280); bare SDK loops to the same server: "
            f"{stock:,.0f} req/s on the stock client, {ours:,.0f} on RunnerOpenAI "
            f"(the runner does {rate / ours:.0%} of that)"
        )
        ratios, alone = [], []
        for attempt in range(1, args.repeat + 1):
            (root / f"b{attempt}").mkdir()
            stock = asyncio.run(bare_run(bodies, 32, stock=True))
            queued = asyncio.run(queued_run(jobs, None, 32, root / f"b{attempt}"))
            ours = asyncio.run(bare_run(bodies, 32, stock=False))
            ratios.append(queued / stock)
            alone.append(queued / ours)
            print(
                f"in-process local endpoint, concurrency 32, try {attempt}: queue + SQLite "
                f"{queued:,.0f} jobs/s; bare loop {stock:,.0f} jobs/s on the stock client "
                f"({queued / stock:.2f} x), {ours:,.0f} on RunnerOpenAI ({queued / ours:.2f} x)"
            )
        print(
            f"queue / bare stock-SDK loop, median of {len(ratios)}: "
            f"{statistics.median(ratios):.2f} x (target >= 0.75 x); "
            f"queue / bare RunnerOpenAI loop (the queue and database alone): "
            f"{statistics.median(alone):.2f} x"
        )


if __name__ == "__main__":
    main()
