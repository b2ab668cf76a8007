"""`runner export` on both backends: OpenAI Batch output lines, JSON Lines, CSV, no half files.

Every openai-batch line is parsed with a strict schema of OpenAI's batch output line
(the SDK has no type for it) and its body with the SDK's own types: ``ChatCompletion``
for successes, ``ErrorObject`` for HTTP errors.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from openai.types import ErrorObject
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict, model_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from runner import export as export_module
from runner.cli import main
from runner.db import engine as db
from runner.errors import QueryError
from runner.export import COLUMNS
from tests.helpers import rows, submit_jobs
from tests.replaykit import settings_with, work
from tests.sqlkit import REMOTE_KEYS, batch_file, build_history

pytestmark = pytest.mark.anyio


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LineError(_Strict):
    code: str
    message: str


class LineResponse(_Strict):
    status_code: int
    request_id: str | None
    body: dict[str, Any]


class BatchOutputLine(_Strict):
    """One line of an OpenAI Batch API output or error file."""

    id: str
    custom_id: str
    response: LineResponse | None
    error: LineError | None

    @model_validator(mode="after")
    def _one_of(self) -> BatchOutputLine:
        assert (self.response is None) != (self.error is None), "response xor error"
        return self


def parse_batch_output(text: str) -> list[BatchOutputLine]:
    """Every line, strictly; success bodies as ChatCompletion, error bodies as ErrorObject."""
    assert text.endswith("\n")
    lines = []
    for raw in text.splitlines():
        line = BatchOutputLine.model_validate_json(raw)
        if line.response is not None and line.response.status_code == 200:
            completion = ChatCompletion.model_validate(line.response.body)
            assert completion.object == "chat.completion" and completion.choices
        elif line.response is not None:
            assert set(line.response.body) == {"error"}
            error = ErrorObject.model_validate(line.response.body["error"])
            assert error.message and error.type
        lines.append(line)
    return lines


def invoke(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def test_openai_batch_lines_parse_strictly_and_carry_each_outcome(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    history = await build_history(engine, db_url, tmp_path)
    code, out, err = invoke(db_url, "export", "remote", "--round", "1", "--format", "openai-batch")
    assert code == 0, err
    lines = parse_batch_output(out)
    assert [line.custom_id for line in lines] == list(REMOTE_KEYS)  # the input file's order
    by_key = {line.custom_id: line for line in lines}
    stored = {
        r.key: r
        for r in await rows(
            engine,
            "SELECT j.key, r.id, r.response, r.provider_request_id FROM runs r "
            "JOIN jobs j ON j.id = r.job_id JOIN rounds ro ON ro.id = r.round_id "
            "WHERE ro.batch_id = :b AND ro.number = 1",
            b=history.remote_id,
        )
    }
    for key in ("ok-1", "ok-2", "flaky"):
        response = by_key[key].response
        assert response is not None and response.status_code == 200
        assert response.body == json.loads(stored[key].response)  # the stored body, whole
        assert response.request_id == stored[key].provider_request_id
        assert response.request_id and response.request_id.startswith("req_")
        assert by_key[key].id == f"batch_req_{stored[key].id}"
    bad, down = by_key["bad"].response, by_key["down"].response
    assert bad is not None and down is not None
    assert bad.status_code == 400 and bad.body["error"]["type"] == "invalid_request_error"
    assert "Invalid value for 'max_tokens'" in bad.body["error"]["message"]
    assert down.status_code == 503 and down.body["error"]["type"] == "server_error"
    # The body is the server's, as it sent it (our "gave up after 2 attempts" is ours).
    assert down.body["error"]["message"] == "overloaded"
    assert bad.request_id and down.request_id and down.request_id.startswith("req_")

    # Round 2 went to a port where nothing listens: no HTTP status, so `error` carries it.
    code, out, _ = invoke(db_url, "export", "remote", "--format", "openai-batch")
    assert code == 0
    for line in parse_batch_output(out):
        assert line.response is None and line.error is not None
        assert line.error.code == "connection_error" and line.error.message

    # A YAML batch: keys are custom_ids too; a replay round on another endpoint.
    code, out, _ = invoke(
        db_url, "export", str(history.mixed_id), "--round", "3", "--format", "openai-batch"
    )
    lines = parse_batch_output(out)
    assert len(lines) == 6 and all(line.response for line in lines)
    fingerprints = {line.response.body["system_fingerprint"] for line in lines if line.response}
    assert len(fingerprints) == 1 and fingerprints != {None}


def test_an_openai_batch_file_round_trips_one_line_per_custom_id(
    db_url: str, tmp_path: Path
) -> None:
    keys = tuple(f"request-{i}" for i in range(40))
    source = batch_file(tmp_path / "batch.jsonl", keys)
    code, _, err = invoke(db_url, "run", str(source), "--endpoint", "local")
    assert code == 0, err
    target = tmp_path / "out" / "batch_output.jsonl"
    target.parent.mkdir()
    code, out, _ = invoke(db_url, "export", "batch", "--format", "openai-batch", "-o", str(target))
    assert code == 0
    assert out.strip() == f"batch 1 (batch) round 1: 40 runs written to {target} (openai-batch)"
    lines = parse_batch_output(target.read_text(encoding="utf-8"))
    assert [line.custom_id for line in lines] == list(keys)
    requests = [json.loads(raw) for raw in source.read_text(encoding="utf-8").splitlines()]
    for request, line in zip(requests, lines, strict=True):
        assert line.response is not None and line.response.status_code == 200
        body = ChatCompletion.model_validate(line.response.body)
        assert body.model == request["body"]["model"] and body.system_fingerprint
    assert sorted(p.name for p in target.parent.iterdir()) == ["batch_output.jsonl"]


async def test_jsonl_and_csv_carry_the_run_results_columns(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    history = await build_history(engine, db_url, tmp_path)
    code, out, _ = invoke(db_url, "export", "mixed", "--round", "2")  # jsonl by default
    assert code == 0
    exported = [json.loads(line) for line in out.splitlines()]
    code, sql_out, _ = invoke(
        db_url,
        "sql",
        f"SELECT {', '.join(COLUMNS)} FROM run_results "
        f"WHERE batch_id = {history.mixed_id} AND round_number = 2 ORDER BY job_id",
        "--format",
        "json",
    )
    expected = json.loads(sql_out)
    assert len(exported) == 6 and [list(e) for e in exported] == [list(COLUMNS)] * 6
    for got, want in zip(exported, expected, strict=True):
        assert got["outputs"] == json.loads(str(want["outputs"]))  # a list, not JSON text
        assert got == {**want, "outputs": got["outputs"]}
        assert got["outputs"] == [got["output"]] and got["round_number"] == 2

    code, out, _ = invoke(db_url, "export", "remote", "--round", "1", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == list(COLUMNS)
    assert [r["job_key"] for r in table] == list(REMOTE_KEYS)
    bad = next(r for r in table if r["job_key"] == "bad")
    assert (bad["state"], bad["error_status"], bad["output"]) == ("failed", "400", "")
    ok = next(r for r in table if r["job_key"] == "ok-1")
    assert json.loads(ok["outputs"]) == [ok["output"]] and ok["finished_at"].endswith("Z")


async def test_bad_exports_say_what_to_do_and_leave_no_file(
    engine: AsyncEngine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = await submit_jobs(engine, tmp_path, 3)  # queued, never worked
    target = tmp_path / "out.jsonl"
    target.write_text("earlier export\n", encoding="utf-8")

    code, _, err = invoke(db_url, "export", "t", "-o", str(target))
    assert code == 1 and err.strip() == (
        "error: batch 1 (t) round 1 has 3 runs queued or running: export it when it is done "
        "(`runner work --burst`), or a finished round with --round N "
        "(`runner sql` reads unfinished rounds)"
    )
    code, _, err = invoke(db_url, "export", "nope", "-o", str(target))
    assert code == 1 and "no batch 'nope'" in err
    code, _, err = invoke(db_url, "export", "t", "--round", "4", "-o", str(target))
    assert code == 1 and err.strip() == "error: batch 1 (t) has no round 4 (it has round 1)"
    code, _, err = invoke(db_url, "export", "t", "-o", str(tmp_path / "missing" / "x.jsonl"))
    assert code == 1 and "no folder" in err and "create it first" in err
    code, _, err = invoke(db_url, "export", "t", "--format", "parquet")
    assert code == 2 and "'parquet' is not one of" in err

    # A database error halfway through: the earlier file stays as it was, no temporary.
    await work(engine, settings_with(db_url), [sub.round_id])
    calls: list[int] = []
    original = export_module.batch_line

    def failing(row: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            raise QueryError("server closed the connection unexpectedly")
        return original(row)

    monkeypatch.setattr(export_module, "batch_line", failing)
    code, _, err = invoke(db_url, "export", "t", "--format", "openai-batch", "-o", str(target))
    assert code == 1 and err.strip() == "error: server closed the connection unexpectedly"
    assert len(calls) == 2
    assert target.read_text(encoding="utf-8") == "earlier export\n"
    assert [p async for p in anyio.Path(tmp_path).glob(".*")] == []  # no temporary left
    monkeypatch.undo()
    code, _, _ = invoke(db_url, "export", "t", "--format", "openai-batch", "-o", str(target))
    assert code == 0 and len(target.read_text(encoding="utf-8").splitlines()) == sub.job_count


def test_export_refuses_a_database_behind_the_schema(empty_db_url: str) -> None:
    db.upgrade(empty_db_url, "0004")
    code, _, err = invoke(empty_db_url, "export", "1")
    assert code == 1 and err.strip() == (
        f"error: the database is at schema revision 0004, this seed-runner reads "
        f"{db.head_revision()}; run `runner db upgrade`"
    )
