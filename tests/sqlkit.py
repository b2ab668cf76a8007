"""A stored history for the sql / export / docs tests (not fixtures): every kind of run.

``build_history`` runs real jobs through the worker and the real ``openai`` SDK:

- batch 1 ``mixed`` (YAML, endpoint ``local``): 4 seeded and 2 unseeded jobs. Round 1
  on ``local``, round 2 a replay on ``local`` (seeded outputs repeat, unseeded ones
  change), round 3 a replay on ``local-v2`` (the built-in model's v2 variant: another
  fingerprint); comparisons 1 -> 2 and 2 -> 3 are stored.
- batch 2 ``remote`` (an OpenAI Batch JSONL file) against a scripted fake server:
  ``ok-*`` succeed, ``flaky`` gets a 503 then succeeds, ``bad`` a permanent 400,
  ``down`` 503 until out of attempts. Round 2 replays it on ``dead`` (127.0.0.1 port 1:
  connection refused), so every run fails without an HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.analysis.compare import compare
from runner.config import EndpointConfig, Settings
from runner.db import engine as db
from runner.replay import replay
from runner.submit import submit
from tests.fakeserver import Received, Reply, completion, fake_server
from tests.replaykit import remote, settings_with, work

MIXED = """\
name: mixed
model: test-model
messages: [{role: user, content: 'Tell me about {topic}.'}]
vars: {topic: [mars, tides]}
items:
  - {kind: s1, seed: 1}
  - {kind: s2, seed: 2}
  - {kind: free, params: {temperature: 1.0}}
params: {max_tokens: 24, temperature: 0.7}
key: "{kind}-{topic}"
"""
REMOTE_KEYS = ("ok-1", "ok-2", "flaky", "bad", "down")


def batch_file(path: Path, keys: tuple[str, ...], *, model: str = "gpt-4o-mini") -> Path:
    """An OpenAI Batch API input file, one request per key (the key is in the prompt)."""
    with path.open("w", encoding="utf-8") as out:
        for index, key in enumerate(keys):
            body = {
                "model": model,
                "seed": index,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"Say something about {key}."}],
            }
            line = {"custom_id": key, "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")
    return path


def _script() -> Any:
    flaky_seen: list[int] = []

    def script(request: Received, count: int) -> Reply:
        text = request.json["messages"][-1]["content"]
        if "bad" in text:
            return Reply(400, {"error": {"message": "Invalid value for 'max_tokens'",
                                         "type": "invalid_request_error",
                                         "param": "max_tokens", "code": None}})  # fmt: skip
        if "down" in text:
            return Reply(503, {"error": {"message": "overloaded", "type": "server_error"}})
        if "flaky" in text and not flaky_seen:
            flaky_seen.append(count)
            return Reply(503, {"error": {"message": "try again", "type": "server_error"}})
        return Reply(body=completion(request.json, fingerprint="fp_fake01"))

    return script


@dataclass(frozen=True)
class History:
    settings: Settings
    mixed_id: int
    remote_id: int
    remote_file: Path


async def build_history(engine: AsyncEngine, db_url: str, tmp_path: Path) -> History:
    v2 = EndpointConfig(name="local-v2", type="local", variant="v2")
    dead = remote("dead", "http://127.0.0.1:1/v1")
    with fake_server(_script()) as server:
        settings = settings_with(db_url, v2, dead, remote("fake", server.base_url))
        mixed_file = tmp_path / "mixed.yaml"
        mixed_file.write_text(MIXED, encoding="utf-8")
        mixed = await submit(engine, mixed_file, settings)
        await work(engine, settings, [mixed.round_id])
        again = await replay(engine, settings, "mixed")
        await work(engine, settings, [again.round_id])
        await compare(engine, settings, "mixed")
        moved = await replay(engine, settings, "mixed", endpoint="local-v2")
        await work(engine, settings, [moved.round_id])
        await compare(engine, settings, "mixed")

        remote_file = batch_file(tmp_path / "remote.jsonl", REMOTE_KEYS)
        sub = await submit(engine, remote_file, settings, endpoint="fake", name="remote")
        await work(engine, settings, [sub.round_id])
        cut = await replay(engine, settings, "remote", endpoint="dead")
        await work(engine, settings, [cut.round_id])
    return History(settings, mixed.batch_id, sub.batch_id, remote_file)


@contextmanager
def sync_engine(db_url: str) -> Iterator[Any]:
    engine = db.create_sync_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def snapshot(db_url: str) -> dict[str, Any]:
    """Every table's and view's rows, and the schema: equal snapshots, unchanged database."""
    with sync_engine(db_url) as engine, engine.connect() as conn:
        inspector = inspect(conn)
        names = sorted(inspector.get_table_names()) + sorted(inspector.get_view_names())
        state: dict[str, Any] = {
            "tables": sorted(inspector.get_table_names()),
            "views": sorted(inspector.get_view_names()),
            "temp": sorted(inspector.get_temp_table_names())
            if conn.dialect.name == "sqlite"
            else [],
        }
        for name in names:
            columns = [c["name"] for c in inspector.get_columns(name)]
            state[f"columns:{name}"] = columns
            rows = conn.execute(text(f'SELECT * FROM "{name}"')).all()
            state[f"rows:{name}"] = sorted(repr(tuple(r)) for r in rows)
        if conn.dialect.name == "sqlite":
            master = conn.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master"))
            state["sqlite_master"] = sorted(repr(tuple(r)) for r in master)
        if conn.dialect.name == "postgresql":
            state["sequences"] = sorted(
                tuple(r)
                for r in conn.execute(
                    text("SELECT sequencename, last_value FROM pg_sequences")
                ).all()
            )
            state["large_objects"] = conn.scalar(
                text("SELECT count(*) FROM pg_largeobject_metadata")
            )
        return state
