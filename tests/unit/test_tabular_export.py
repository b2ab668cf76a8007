"""Pure pieces of sql and export: values, writers, OpenAI Batch lines, the SQLite authorizer."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from runner.db.readonly import sqlite_authorizer
from runner.export import CANCELLED_MESSAGE, batch_line
from runner.tabular import plain, table_text, text, unique_names, write_json, write_rows

RUN = {
    "run_id": 7,
    "job_key": "k",
    "state": "failed",
    "response": None,
    "provider_request_id": None,
    "error_type": None,
    "error_status": None,
    "error_message": None,
    "error_body": None,
}


def test_values_read_the_same_from_both_backends() -> None:
    aware = datetime(2026, 11, 22, 2, 21, 36, 383350, tzinfo=timezone(timedelta(hours=2)))
    assert plain(aware) == "2026-11-22T00:21:36.383350Z"  # what SQLite stores
    assert plain(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    assert plain(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05"  # naive: as it is
    assert plain(date(2026, 11, 22)) == "2026-11-22"
    assert plain(Decimal("12")) == 12 and isinstance(plain(Decimal("12")), int)
    assert plain(Decimal("0.25")) == 0.25 and plain(Decimal("NaN")) == "NaN"
    assert plain(float("inf")) == "inf" and plain(1.5) == 1.5
    assert plain(b"\x00\xff") == "00ff" and plain(memoryview(b"\x01")) == "01"
    assert plain({"a": [1]}) == {"a": [1]} and plain(True) is True
    assert plain(timedelta(seconds=90)) == 90.0
    assert text(None) == "" and text(None, "NULL") == "NULL" and text(False) == "false"
    assert text({"a": "é"}) == '{"a": "é"}'


def test_repeated_column_names_stay_apart() -> None:
    assert unique_names(["a", "a", "b", "a", "a_2"]) == ["a", "a_2", "b", "a_3", "a_2_2"]


def test_json_is_an_array_written_as_it_goes() -> None:
    out = io.StringIO()
    assert write_json(out, ["a"], iter([])) == 0 and json.loads(out.getvalue()) == []
    out = io.StringIO()
    assert write_json(out, ["a", "a"], iter([(1, 2), (3, None)])) == 2
    assert json.loads(out.getvalue()) == [{"a": 1, "a_2": 2}, {"a": 3, "a_2": None}]
    with pytest.raises(ValueError, match="unknown format"):
        write_rows("xml", io.StringIO(), ["a"], [])


def test_table_shows_null_and_right_aligns_numbers() -> None:
    shown = table_text(["name", "n"], [("x", 1), (None, 22.123456789)], color=False, width=80)
    lines = shown.splitlines()
    assert lines[0].split() == ["name", "n"]
    assert lines[2].split() == ["x", "1"] and lines[3].split() == ["NULL", "22.1235"]
    assert lines[2].index("1") == lines[3].index("22.1235") + len("22.1235") - 1
    assert lines[-1] == "(2 rows)"
    assert table_text([], [], color=False, width=80) == "(0 rows)"


def _line(**changes: Any) -> dict[str, Any]:
    return batch_line({**RUN, **changes})


def test_a_success_carries_the_stored_body() -> None:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    line = _line(state="succeeded", response=json.dumps(body), provider_request_id="req_9")
    assert line == {
        "id": "batch_req_7",
        "custom_id": "k",
        "response": {"status_code": 200, "request_id": "req_9", "body": body},
        "error": None,
    }


def test_failures_carry_their_error_as_openai_writes_it() -> None:
    http = _line(error_type="rate_limit_exceeded", error_status=429, error_message="slow down")
    assert http["error"] is None and http["response"] == {
        "status_code": 429,
        "request_id": None,
        "body": {
            "error": {
                "message": "slow down",
                "type": "rate_limit_exceeded",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
    }
    # What the server sent is written as it sent it, with its request id.
    server_said = {"detail": "Invalid API key"}
    llama = _line(
        error_type="http_401",
        error_status=401,
        error_message="Invalid API key",
        error_body=json.dumps(server_said),
        provider_request_id="req_401",
    )
    assert llama["response"] == {"status_code": 401, "request_id": "req_401", "body": server_said}
    # A body that is not JSON (a proxy's HTML page) becomes an OpenAI-shaped one.
    html = _line(error_type="http_502", error_status=502, error_message="<h1>Bad Gateway</h1>",
                 error_body="<h1>Bad Gateway</h1>")  # fmt: skip
    assert html["response"]["body"]["error"]["message"] == "<h1>Bad Gateway</h1>"
    timeout = _line(error_type="timeout", error_message="no answer in 120 s")
    assert timeout["response"] is None
    assert timeout["error"] == {"code": "timeout", "message": "no answer in 120 s"}
    # A 200 whose body was not a completion is no HTTP error: it goes to `error`.
    bad_body = _line(error_type="invalid_response", error_status=200, error_message="not json")
    assert bad_body["response"] is None and bad_body["error"]["code"] == "invalid_response"
    cancelled = _line(state="cancelled")
    assert cancelled["error"] == {"code": "batch_cancelled", "message": CANCELLED_MESSAGE}
    with pytest.raises(ValueError, match="run 7 is queued, not finished"):
        _line(state="queued")


@pytest.mark.parametrize(
    ("action", "arg1", "arg2", "allowed"),
    [
        (sqlite3.SQLITE_SELECT, None, None, True),
        (sqlite3.SQLITE_READ, "runs", "output", True),
        (sqlite3.SQLITE_FUNCTION, None, "json_extract", True),
        (sqlite3.SQLITE_RECURSIVE, None, None, True),
        (sqlite3.SQLITE_PRAGMA, "table_info", "runs", True),
        (sqlite3.SQLITE_PRAGMA, "user_version", None, True),
        (sqlite3.SQLITE_PRAGMA, "user_version", "7", False),
        (sqlite3.SQLITE_PRAGMA, "writable_schema", "ON", False),
        (sqlite3.SQLITE_PRAGMA, "query_only", "0", False),
        (sqlite3.SQLITE_PRAGMA, "optimize", None, False),
        (sqlite3.SQLITE_UPDATE, "sqlite_master", "sql", True),
        (sqlite3.SQLITE_UPDATE, "runs", "state", False),
        (sqlite3.SQLITE_INSERT, "runs", None, False),
        (sqlite3.SQLITE_DELETE, "runs", None, False),
        (sqlite3.SQLITE_ATTACH, "other.db", None, False),
        (sqlite3.SQLITE_DETACH, "main", None, False),
        (sqlite3.SQLITE_CREATE_TEMP_TABLE, "evil", None, False),
        (sqlite3.SQLITE_DROP_VIEW, "run_results", None, False),
        (sqlite3.SQLITE_TRANSACTION, "BEGIN", None, False),
    ],
)
def test_the_authorizer_allows_reading_only(
    action: int, arg1: str | None, arg2: str | None, allowed: bool
) -> None:
    expected = sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY
    assert sqlite_authorizer(action, arg1, arg2, "main", None) == expected
