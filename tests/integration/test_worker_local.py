"""The worker with the built-in local endpoint (in-process, through the openai SDK)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import load_settings
from runner.work import Worker
from tests.helpers import rows, submit_jobs

pytestmark = pytest.mark.anyio
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TIME_COLUMNS = {
    "batches": ["submitted_at"],
    "rounds": ["created_at"],
    "runs": ["available_at", "started_at", "finished_at"],
    "attempts": ["started_at"],
}


async def test_local_batch_runs_to_completion_with_seed_output_usage_fingerprint(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = load_settings(database_url=db_url)
    sub = await submit_jobs(engine, tmp_path, 30, settings)
    with anyio.fail_after(60):
        stats = await Worker(engine, settings, concurrency=8, burst=True).run()
    assert (stats.succeeded, stats.failed) == (30, 0)
    runs = await rows(
        engine,
        "SELECT r.state, j.seed, r.output, r.prompt_tokens, r.completion_tokens, "
        "r.system_fingerprint, r.response_model, r.round_id FROM runs r JOIN jobs j "
        "ON j.id = r.job_id",
    )
    assert len(runs) == 30
    for run in runs:
        assert run.state == "succeeded" and run.seed == 42 and run.round_id == sub.round_id
        assert run.output and run.prompt_tokens > 0 and 0 < run.completion_tokens <= 16
        assert re.fullmatch(r"fp_[0-9a-f]{10}", run.system_fingerprint)
        assert run.response_model == "test-model"  # the local model echoes the name asked
    assert len({r.output for r in runs}) > 1  # different prompts, different texts


async def test_timestamps_are_iso_8601_utc_text_on_sqlite_and_timestamptz_on_postgres(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    if not db_url.startswith("sqlite"):
        for table, columns in TIME_COLUMNS.items():
            for column in columns:
                (kind,) = await rows(
                    engine,
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = :t AND column_name = :c",
                    t=table,
                    c=column,
                )
                assert kind[0] == "timestamp with time zone", (table, column)
        return
    settings = load_settings(database_url=db_url)
    await submit_jobs(engine, tmp_path, 3, settings)
    await Worker(engine, settings, burst=True).run()
    for table, columns in TIME_COLUMNS.items():
        for column in columns:
            values = [r[0] for r in await rows(engine, f"SELECT {column} FROM {table}")]
            assert values, (table, column)
            for value in values:
                assert isinstance(value, str) and ISO_UTC.match(value), (table, column, value)


async def test_a_burst_worker_ends_once_its_last_results_are_stored_not_a_poll_later(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    # Its last results are still with the writer when the queue comes back empty: the
    # worker waits for them to be stored, not for the next poll (an hour here).
    base = load_settings(database_url=db_url)
    settings = replace(base, worker=replace(base.worker, poll_seconds=3600))
    await submit_jobs(engine, tmp_path, 40, settings)
    with anyio.fail_after(60):  # all 40 at once: they finish together, just before the end
        stats = await Worker(engine, settings, concurrency=40, burst=True).run()
    assert stats.succeeded == 40
    (left,) = await rows(engine, "SELECT count(*) AS n FROM runs WHERE state <> 'succeeded'")
    assert left.n == 0
