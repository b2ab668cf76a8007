"""cancel, retry, batches and cost through the CLI, on both backends."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.cli import main
from runner.config import EndpointConfig, WorkerConfig, load_settings
from runner.submit import submit
from runner.work import Worker
from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import SUCCESS_ATTEMPTS_MISMATCH, rows, wait_for, with_fake, yaml_job

pytestmark = pytest.mark.anyio


def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args])
    return result.exit_code, result.stdout, result.stderr


async def test_cancel_stops_queued_at_once_and_running_at_the_next_heartbeat(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    slow = lambda req, n: Reply(body=completion(req.json), delay=1.5)  # noqa: E731
    with fake_server(slow) as server:
        settings = with_fake(
            db_url, server.base_url, concurrency=3, poll_seconds=0.05, heartbeat_seconds=0.2
        )
        await submit(engine, yaml_job(tmp_path, 10), settings, endpoint="fake")
        worker = Worker(engine, settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await wait_for(lambda: len(server.received) >= 3)
            code, out, _ = await anyio.to_thread.run_sync(lambda: cli(db_url, "cancel", "t"))
            assert code == 0
            match = re.fullmatch(
                r"batch 1 \(t\): cancelled (\d+) queued and (\d+) running runs", out.strip()
            )
            assert match, out
            queued, running = int(match[1]), int(match[2])
            # Running = claimed by the worker: 3 requests in flight, maybe more claimed ahead.
            assert queued + running == 10 and running >= 3
            # They are abandoned at the heartbeat, long before the requests would answer.
            await wait_for(lambda: worker.stats.abandoned == running, limit=1.2)
            worker.request_stop()
    states = await rows(engine, "SELECT state, output, lease_owner FROM runs")
    assert {tuple(r) for r in states} == {("cancelled", None, None)}
    assert len(server.received) == 3
    assert await rows(engine, SUCCESS_ATTEMPTS_MISMATCH) == []
    code, out, _ = await anyio.to_thread.run_sync(lambda: cli(db_url, "status", "t"))
    assert "10/10 done: 10 cancelled" in out


async def test_results_arriving_after_a_cancel_are_logged_as_discarded_not_succeeded(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """The answers come back before the worker's heartbeat notices the cancel: the runs
    stay cancelled, and their attempts say the results were thrown away."""
    answer = threading.Event()

    def held(req: Received, n: int) -> Reply:
        answer.wait(20)
        return Reply(body=completion(req.json))

    with fake_server(held) as server:
        # A heartbeat far away: the answers arrive first.
        settings = with_fake(
            db_url, server.base_url, timeout=30, concurrency=3, poll_seconds=0.05,
            heartbeat_seconds=60,
        )  # fmt: skip
        await submit(engine, yaml_job(tmp_path, 3), settings, endpoint="fake")
        worker = Worker(engine, settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await wait_for(lambda: len(server.received) == 3)
            code, out, _ = await anyio.to_thread.run_sync(lambda: cli(db_url, "cancel", "t"))
            assert code == 0 and "cancelled 0 queued and 3 running runs" in out
            answer.set()
            await wait_for(lambda: worker.stats.fenced_out == 3)
            worker.request_stop()
    runs = await rows(engine, "SELECT state, output, attempts FROM runs")
    assert {tuple(r) for r in runs} == {("cancelled", None, 1)}
    attempts = await rows(engine, "SELECT outcome, http_status, number FROM attempts")
    assert sorted(tuple(a) for a in attempts) == [("discarded", 200, 1)] * 3
    assert worker.stats.succeeded == 0
    assert await rows(engine, SUCCESS_ATTEMPTS_MISMATCH) == []


async def test_retry_failed_queues_them_again_as_new_attempts(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    failing = True

    def script(req: object, n: int) -> Reply:
        if failing:
            return Reply(500, {"error": {"message": "down", "type": "server_error"}})
        return Reply(body=completion(req.json))  # type: ignore[attr-defined]

    with fake_server(script) as server:
        base = load_settings(database_url=db_url)
        fake = EndpointConfig(name="fake", type="openai", base_url=server.base_url, timeout=5)
        settings = replace(
            base,
            endpoints={**base.endpoints, "fake": fake},
            worker=WorkerConfig(
                poll_seconds=0.02,
                max_attempts=2,
                backoff_base_seconds=0.01,
                backoff_max_seconds=0.02,
            ),
        )
        sub = await submit(engine, yaml_job(tmp_path, 4), settings, endpoint="fake")
        await Worker(engine, settings, burst=True, round_ids=[sub.round_id]).run()
        assert {tuple(r) for r in await rows(engine, "SELECT state, attempts FROM runs")} == {
            ("failed", 2)
        }
        code, _, err = await anyio.to_thread.run_sync(lambda: cli(db_url, "retry", "t"))
        assert code == 2 and "--failed and/or --cancelled" in err
        code, out, _ = await anyio.to_thread.run_sync(
            lambda: cli(db_url, "retry", "t", "--failed", "--attempts", "3")
        )
        assert code == 0 and out.startswith("batch 1 (t): 4 runs queued again")
        failing = False
        await Worker(engine, settings, burst=True, round_ids=[sub.round_id]).run()
    runs = {tuple(r) for r in await rows(engine, "SELECT state, attempts, max_attempts FROM runs")}
    assert runs == {("succeeded", 3, 5)}


def test_batches_and_cost_known_and_unknown(db_url: str, tmp_path: Path) -> None:
    code, out, _ = cli(db_url, "batches")
    assert code == 0 and "no batches yet" in out
    assert cli(db_url, "run", "-q", str(yaml_job(tmp_path, 2)))[0] == 0
    code, out, _ = cli(db_url, "batches")
    line = out.splitlines()[1]
    assert "t" in line and "#1: 2/2 done" in line and "fp_" in line
    code, out, _ = cli(db_url, "status", "t")
    assert "cost: unknown (no price for test-model" in out
    code, out, _ = cli(db_url, "sql", "SELECT cost_usd FROM round_costs", "--format", "json")
    assert json.loads(out) == [{"cost_usd": None}]  # unknown, not 0
    code, out, _ = cli(db_url, "status", "t", "--format", "json")
    assert json.loads(out)[0]["rounds"][0]["cost_usd"] is None
    (tmp_path / "runner.toml").write_text('[prices."test-model"]\ninput = 1.0\noutput = 2.0\n')
    code, out, _ = cli(db_url, "status", "t", "--format", "json")
    rnd = json.loads(out)[0]["rounds"][0]
    expected = (rnd["prompt_tokens"] * 1.0 + rnd["completion_tokens"] * 2.0) / 1_000_000
    assert rnd["cost_usd"] == pytest.approx(expected) and rnd["cost_usd"] > 0
    code, out, _ = cli(db_url, "status", "t")
    assert f"cost: ${expected:,.4f}" in out
    # The round_costs view prices the same tokens from model_prices (copied from config).
    code, out, _ = cli(
        db_url, "sql", "SELECT model, prompt_tokens, cost_usd FROM round_costs", "--format", "json"
    )
    assert code == 0, out
    (row,) = json.loads(out)
    assert row["model"] == "test-model" and row["cost_usd"] == pytest.approx(expected)
    # compare shows each side's cost too (a replay of seeded jobs costs the same)
    assert cli(db_url, "replay", "t", "--work")[0] == 0
    code, out, _ = cli(db_url, "compare", "t", "--format", "json")
    assert json.loads(out)["cost_usd"] == {
        "a": pytest.approx(expected),
        "b": pytest.approx(expected),
    }
    code, out, _ = cli(db_url, "compare", "t")
    assert f"A cost: ${expected:,.4f}" in out and f"B cost: ${expected:,.4f}" in out
    (tmp_path / "runner.toml").write_text('[prices."test-model"]\ninput = 1.0\n')
    code, _, err = cli(db_url, "status")
    assert code == 2 and "missing output" in err
