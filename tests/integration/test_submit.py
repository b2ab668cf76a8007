"""Submitting is all-or-nothing on both backends, with errors naming file, line and field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import load_settings
from runner.db.engine import BULK_SQLITE_PRAGMAS
from runner.errors import ConfigError, JobFileError
from runner.submit import submit
from tests.helpers import rows, scalar, yaml_job

pytestmark = pytest.mark.anyio


def batch_file(tmp_path: Path, ids: list[str], bad_line: int | None = None) -> Path:
    lines = []
    for number, custom_id in enumerate(ids, start=1):
        body = {"model": "gpt-4o-mini", "seed": number,
                "messages": [{"role": "user", "content": f"q{number}"}]}  # fmt: skip
        if number == bad_line:
            body["temperature"] = "hot"
        lines.append(json.dumps({"custom_id": custom_id, "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}))  # fmt: skip
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


async def assert_nothing_written(engine: AsyncEngine) -> None:
    for table in ("batches", "jobs", "rounds", "runs"):
        assert await scalar(engine, f"SELECT count(*) FROM {table}") == 0, table


async def test_submit_stores_batch_jobs_round_and_queued_runs(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    path = batch_file(tmp_path, [f"id-{i}" for i in range(4500)])  # > 2 insert chunks
    sub = await submit(engine, path, load_settings(), endpoint="local")
    assert (sub.job_count, sub.round_number) == (4500, 1)
    (batch,) = await rows(
        engine, "SELECT name, source_sha256, job_count, source_format FROM batches"
    )
    assert tuple(batch) == (
        "batch",
        hashlib.sha256(path.read_bytes()).hexdigest(),
        4500,
        "openai-batch",
    )
    (rnd,) = await rows(engine, "SELECT number, trigger FROM rounds")
    assert tuple(rnd) == (1, "submit")
    assert await scalar(engine, "SELECT count(*) FROM runs WHERE state = 'queued'") == 4500
    assert await scalar(engine, "SELECT count(DISTINCT request_hash) FROM jobs") == 4500
    (job,) = await rows(
        engine, "SELECT key, seed, source_line, endpoint FROM jobs WHERE key='id-9'"
    )
    assert tuple(job) == ("id-9", 10, 10, "local")


async def test_bodies_are_stored_exactly_whatever_they_contain(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # PostgreSQL loads jobs with COPY, whose text format gives backslashes, tabs,
    # newlines and "\." meanings of their own: none may leak into what is stored.
    contents = ["back\\slash \\N \\t", "tab\there", "line\nbreak", "\\.", "ünï 🚀 \u2028",
                "quote \" and '", "ctrl \x01"]  # fmt: skip
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "m", "messages": [{"role": "user", "content": c}],
                             **({"seed": i} if i else {})}}) + "\n"  # c0 unseeded: NULL
        for i, c in enumerate(contents)
    ))  # fmt: skip
    await submit(engine, path, load_settings(), endpoint="local")
    stored = await rows(
        engine, "SELECT key, body, seed, source_line FROM jobs ORDER BY source_line"
    )
    assert [json.loads(r.body)["messages"][0]["content"] for r in stored] == contents
    assert [(r.key, r.seed, r.source_line) for r in stored] == [
        (f"c{i}", None if i == 0 else i, i + 1) for i in range(len(contents))
    ]


async def test_bad_line_deep_in_the_file_writes_nothing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    path = batch_file(tmp_path, [f"id-{i}" for i in range(5000)], bad_line=4999)
    with pytest.raises(JobFileError) as info:
        await submit(engine, path, load_settings())
    assert (info.value.line, info.value.field) == (4999, "body.temperature")
    await assert_nothing_written(engine)


async def test_duplicate_custom_id_names_the_second_line(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    ids = [f"id-{i}" for i in range(3000)] + ["id-7"]
    with pytest.raises(JobFileError) as info:
        await submit(engine, batch_file(tmp_path, ids), load_settings())
    assert (info.value.line, info.value.field) == (3001, "custom_id")
    assert "duplicate custom_id 'id-7'" in str(info.value)
    await assert_nothing_written(engine)


async def test_duplicate_keys_from_a_yaml_template(engine: AsyncEngine, tmp_path: Path) -> None:
    path = yaml_job(tmp_path, 3, extra="key: same-{model}\n")
    with pytest.raises(JobFileError, match=r"t\.yaml:\d+: key: duplicate key 'same-test-model'"):
        await submit(engine, path, load_settings())
    await assert_nothing_written(engine)


async def test_unknown_endpoint_writes_nothing(engine: AsyncEngine, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown endpoint 'nowhere'"):
        await submit(engine, yaml_job(tmp_path, 2), load_settings(), endpoint="nowhere")
    await assert_nothing_written(engine)


async def _pragmas(engine: AsyncEngine) -> tuple[Any, dict[str, int]]:
    """The pooled connection the engine lends next, and its settings that a bulk write
    changes."""
    async with engine.connect() as conn:
        dbapi = (await conn.get_raw_connection()).dbapi_connection
        values = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
            for name in BULK_SQLITE_PRAGMAS
        }
    return dbapi, values


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("late_error", [None, "bad value", "duplicate"])
async def test_sqlite_chunks_checkpoint_rarely_and_the_pool_gets_its_settings_back(
    engine: AsyncEngine, tmp_path: Path, late_error: str | None
) -> None:
    # A big submit's chunk commits each copied the WAL into the database while SQLite
    # checkpointed every 1,000 pages; the connection writing them now checkpoints rarely
    # (and caches more), and gives the settings back, whether the submit stored its
    # batch or, failing in its third chunk (5,000 jobs a chunk), nothing.
    pooled, defaults = await _pragmas(engine)
    ids = [f"id-{i}" for i in range(10_000)] + ["id-7" if late_error == "duplicate" else "last"]
    path = batch_file(tmp_path, ids, bad_line=10_001 if late_error == "bad value" else None)
    during: list[dict[str, int]] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _settings_of_the_writer(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO jobs"):
            cursor = conn.connection.dbapi_connection.cursor()
            values = {}
            for name in BULK_SQLITE_PRAGMAS:
                cursor.execute(f"PRAGMA {name}")
                values[name] = cursor.fetchone()[0]
            cursor.close()
            during.append(values)

    if late_error is None:
        assert (await submit(engine, path, load_settings(), endpoint="local")).job_count == 10_001
    else:
        with pytest.raises(JobFileError) as info:
            await submit(engine, path, load_settings(), endpoint="local")
        assert info.value.line == 10_001
        await assert_nothing_written(engine)
    assert during == [BULK_SQLITE_PRAGMAS] * (3 if late_error != "bad value" else 2)
    assert defaults != BULK_SQLITE_PRAGMAS
    assert await _pragmas(engine) == (pooled, defaults)
