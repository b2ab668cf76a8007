"""The worker learns what `runner serve` charges per request and never overruns its budget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import EndpointConfig, WorkerConfig, load_settings
from runner.localmodel.server import ServerOptions, running_server
from runner.localmodel.service import LocalModelService
from runner.ratelimit import estimate_tokens
from runner.submit import submit
from runner.work import Worker
from tests.helpers import rows

pytestmark = pytest.mark.anyio

TPM = 3000


def bodies(count: int) -> list[dict[str, object]]:
    # Ellipses: the server's tokenizer counts every dot, tiktoken a few: it charges ~20 %
    # more than the worker's estimate, as OpenAI's own count may differ from tiktoken's.
    return [
        {
            "model": "m",
            "seed": i,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": f"Tides ... waves ... storms ... {i} ..."}],
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("tpm", [TPM, None], ids=["configured", "not-configured"])
async def test_worker_learns_the_servers_charge_and_never_overruns_its_token_budget(
    engine: AsyncEngine, db_url: str, tmp_path: Path, tpm: int | None
) -> None:
    service = LocalModelService()
    jobs = bodies(104)
    charges = [
        service.estimate_tokens("POST", "/v1/chat/completions", json.dumps(b).encode())
        for b in jobs
    ]
    estimates = [estimate_tokens(b) for b in jobs]
    # The runs need more than the server's initial bucket: the budget runs out mid-run.
    assert TPM < sum(charges) < TPM + 5 * max(charges)
    path = tmp_path / "jobs.jsonl"
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
        for i, b in enumerate(jobs)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    options = ServerOptions(port=0, tpm=TPM, log_level="warning")
    with running_server(options) as url:
        base = load_settings(database_url=db_url)
        # A long timeout: on a loaded machine a timed-out try would be a retry, not a 429.
        serve = EndpointConfig(name="serve", type="openai", base_url=url, timeout=120, tpm=tpm)
        settings = replace(
            base,
            endpoints={**base.endpoints, "serve": serve},
            worker=WorkerConfig(concurrency=16, poll_seconds=0.02, max_attempts=5),
        )
        sub = await submit(engine, path, settings, endpoint="serve")
        worker = Worker(engine, settings, burst=True, round_ids=[sub.round_id])
        stats = await worker.run()
    statuses = await rows(engine, "SELECT http_status, count(*) n FROM attempts GROUP BY 1")
    assert {r.http_status: r.n for r in statuses}.get(429, 0) == 0  # not one 429
    assert stats.rate_limited == 0 and stats.succeeded == len(jobs)
    (limiter,) = worker.limits.all()
    assert limiter.limit("tokens") == TPM
    # Learned within the first rounds: the server's count per estimated token (~1.2), or
    # more where answers were read late on a busy machine; never less.
    assert limiter.charge.ratio is not None
    assert limiter.charge.ratio >= 0.99 * sum(charges) / sum(estimates) > 1.1
