"""Batch input lines and result lines, without I/O beyond a temporary file."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from runner.db.queue.batches import ChunkRequest, custom_id, parse_custom_id
from runner.endpoints import Completion, EndpointError
from runner.endpoints.batch import line_result
from runner.work.batches.lines import input_line, write_input

BODY = '{"messages":[{"content":"hi","role":"user"}],"model":"m","seed":1}'


def _line(status: int | None, body: object = None, error: object = None) -> str:
    response = None if status is None else {"status_code": status, "request_id": "r1", "body": body}
    return json.dumps({"id": "x", "custom_id": "run-7-2", "response": response, "error": error})


def test_an_input_line_carries_the_stored_body_byte_for_byte() -> None:
    line = input_line(ChunkRequest(7, 2, BODY))
    assert line.endswith(b', "body": ' + BODY.encode() + b"}\n")
    data = json.loads(line)
    assert (data["custom_id"], data["method"], data["url"]) == (
        "run-7-2", "POST", "/v1/chat/completions",
    )  # fmt: skip
    assert parse_custom_id(custom_id(7, 2)) == (7, 2)
    assert parse_custom_id("j1") is None and parse_custom_id("run-x-1") is None


def test_result_lines_are_classified_like_http_responses() -> None:
    completion = {
        "id": "c1", "model": "m", "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }  # fmt: skip
    cid, ok = line_result(_line(200, completion), str)
    assert cid == "run-7-2" and isinstance(ok, Completion)
    assert (ok.outputs, ok.system_fingerprint, ok.total_tokens, ok.request_id) == (
        ("ok",), "fp_1", 4, "r1",
    )  # fmt: skip
    for status, retryable in ((429, True), (500, True), (400, False)):
        err = {"error": {"message": "no", "type": "t", "code": f"c{status}"}}
        _, failed = line_result(_line(status, err), str)
        assert isinstance(failed, EndpointError)
        assert (failed.retryable, failed.status, failed.error_type) == (
            retryable, status, f"c{status}",
        )  # fmt: skip
    expired = {"code": "batch_expired", "message": "not executed in time"}
    _, late = line_result(_line(None, error=expired), str)
    assert isinstance(late, EndpointError) and late.retryable
    assert (late.error_type, late.message) == ("batch_expired", "not executed in time")
    with pytest.raises(ValueError):
        line_result(json.dumps({"response": None}), str)


def test_an_input_file_stops_at_its_size_limit(tmp_path: Path) -> None:
    requests = [ChunkRequest(i, 1, BODY) for i in range(1, 11)]
    size = len(input_line(requests[0]))

    async def pages(after: int) -> list[ChunkRequest]:
        return [r for r in requests if r.run_id > after][:3]

    written = anyio.run(write_input, tmp_path / "in.jsonl", pages, 4 * size + 1)
    assert (written.lines, written.size, written.left_out) == (4, 4 * size, [5, 6, 7, 8, 9, 10])
    assert len((tmp_path / "in.jsonl").read_bytes().splitlines()) == 4
