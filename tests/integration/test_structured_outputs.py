"""Structured outputs on both backends: every output of a job with a JSON schema is
validated (runs.schema_valid); an invalid one is a stored success, not a retry; status,
compare and the drift report show the share of valid outputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.analysis.drift import history
from runner.scheduling import schedule
from runner.scheduling.view import drift_text
from runner.submit import submit
from tests.helpers import rows, sql
from tests.replaykit import invoke, work
from tests.schedulekit import schedule_settings

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "properties": {
        "headline": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["headline", "score"],
    "additionalProperties": False,
}
CHAT_FORMAT = {"type": "json_schema", "json_schema": {"name": "news", "schema": SCHEMA}}
TEXT_FORMAT = {"type": "json_schema", "name": "news", "schema": SCHEMA}
MESSAGES = [{"role": "user", "content": "News about Mars"}]


def _line(key: str, url: str, body: dict[str, object]) -> str:
    return json.dumps({"custom_id": key, "method": "POST", "url": url, "body": body})


def _batch_file(tmp_path: Path) -> Path:
    chat, responses = "/v1/chat/completions", "/v1/responses"
    lines = [
        _line("chat-whole", chat, {"model": "m", "messages": MESSAGES, "seed": 1,
                                   "response_format": CHAT_FORMAT}),
        # Cut at 4 tokens: broken JSON, as a real model's reply cut by max_tokens is.
        _line("chat-cut", chat, {"model": "m", "messages": MESSAGES, "seed": 1, "max_tokens": 4,
                                 "response_format": CHAT_FORMAT}),
        _line("resp-whole", responses, {"model": "m", "input": "News about tides",
                                        "text": {"format": TEXT_FORMAT}}),
        _line("plain", chat, {"model": "m", "messages": MESSAGES, "max_tokens": 5}),
    ]  # fmt: skip
    path = tmp_path / "news.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_valid_share_in_status_and_compare(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(db_url, "run", str(_batch_file(tmp_path)), "--endpoint", "local")
    assert code == 0, err  # an invalid output is a success
    found = dict(
        sql(
            db_url,
            "SELECT job_key, schema_valid FROM run_results WHERE state = 'succeeded'"
            " AND attempts = 1",
        )
    )
    assert {k: (None if v is None else bool(v)) for k, v in found.items()} == {
        "chat-whole": True,
        "chat-cut": False,
        "resp-whole": True,
        "plain": None,
    }
    code, out, err = invoke(db_url, "status", "news")
    assert "json schema: 2/3 outputs valid (66.7%)" in out

    code, _, err = invoke(db_url, "replay", "news", "--work")
    assert code == 0, err
    code, out, err = invoke(db_url, "compare", "news", "--format", "json")
    summary = json.loads(out)["summary"]
    assert (summary["schema_valid_a"], summary["schema_checked_a"]) == (2, 3)
    assert (summary["schema_valid_b"], summary["schema_checked_b"]) == (2, 3)
    code, out, err = invoke(db_url, "compare", "news")
    assert "valid in round 1: 2/3 (66.7%), in round 2: 2/3 (66.7%)" in out


async def test_the_drift_report_gives_the_valid_share(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    path = tmp_path / "nightly.yaml"
    path.write_text(
        "name: nightly\nmodel: m\nmessages: [{role: user, content: 'News about {x}'}]\n"
        "vars: {x: [Mars, tides]}\nseed: 3\n"
        "items: [{cut: no}, {cut: yes, params: {max_tokens: 4}}]\n"
        f"params: {{response_format: {json.dumps(CHAT_FORMAT)}}}\n"
        "schedule: '0 3 * * *'\n",
        encoding="utf-8",
    )
    created = datetime(2026, 11, 20, 12, tzinfo=UTC)
    tick = datetime(2026, 11, 21, 3, tzinfo=UTC)
    sub = await submit(engine, path, settings, now=created)
    await work(engine, settings, [sub.round_id])
    (made,) = await schedule.tick(engine, settings, tick)
    await work(engine, settings, [made.round.round_id])
    result = await schedule.run_pass(engine, settings, lambda: tick, "test")
    assert len(result.reports) == 1
    ((rate,),) = await rows(engine, "SELECT schema_valid_rate FROM drift_reports")
    assert rate == pytest.approx(0.5)  # the two cut replies are broken JSON
    out = drift_text(await history(engine, None, 10), width=200)
    assert "schema valid" in out and "50.0%" in out
