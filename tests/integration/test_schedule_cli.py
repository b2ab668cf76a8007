"""`runner schedule ...` and `runner drift` through click, on both backends.

Bad input (invalid cron, unknown time zone, unknown batch, taken name) gets one line on
stderr, a non-zero exit, and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import sql
from tests.replaykit import invoke, write_config
from tests.schedulekit import nightly_job

query = sql


def count(db_url: str, table: str) -> int:
    return int(query(db_url, f"SELECT count(*) FROM {table}")[0][0])  # type: ignore[call-overload]


@pytest.fixture
def batch(db_url: str, tmp_path: Path) -> str:
    """A finished batch named 'b' (3 jobs on the built-in model), runner.toml in place."""
    write_config(tmp_path)
    path = nightly_job(tmp_path, 3, name="b")
    path.write_text(path.read_text().split("schedule:")[0])  # no schedule of its own
    code, _, err = invoke(db_url, "run", str(path))
    assert code == 0, err
    return "b"


BAD = [
    (["--cron", "0 3 * *"], 2, "error: invalid cron expression '0 3 * *': expected 5 fields"),
    (["--cron", "0 3 * * 9"], 2, "error: invalid cron expression '0 3 * * 9': [0 3 * * 9] is"),
    (
        ["--cron", "0 3 * * *", "--timezone", "Europe/Pariss"],
        2,
        "error: unknown time zone 'Europe/Pariss': give an IANA name",
    ),
]


@pytest.mark.parametrize(("flags", "code", "message"), BAD)
def test_bad_schedules_are_one_line_errors_and_write_nothing(
    db_url: str, batch: str, flags: list[str], code: int, message: str
) -> None:
    got, out, err = invoke(db_url, "schedule", "add", "nightly", batch, *flags)
    assert (got, out) == (code, "")
    assert err.startswith(message) and err.count("\n") == 1, err
    assert count(db_url, "schedules") == 0


def test_unknown_batch_and_taken_name_write_nothing(db_url: str, batch: str) -> None:
    got, _, err = invoke(db_url, "schedule", "add", "nightly", "nope", "--cron", "0 3 * * *")
    assert got == 1 and err.count("\n") == 1
    assert err.startswith("error: no batch 'nope' (give a batch id or name")
    assert count(db_url, "schedules") == 0
    got, out, _ = invoke(db_url, "schedule", "add", "nightly", batch, "--cron", "0 3 * * *")
    assert got == 0 and out.startswith("schedule nightly: batch 1 (b), '0 3 * * *' in UTC")
    got, _, err = invoke(
        db_url, "schedule", "add", "nightly", batch, "--cron", "0 4 * * *", "--timezone", "UTC"
    )
    assert got == 2 and err.count("\n") == 1
    assert err.startswith("error: a schedule named 'nightly' already exists")
    assert query(db_url, "SELECT name, cron FROM schedules") == [("nightly", "0 3 * * *")]
    for command in ("pause", "resume", "remove"):
        got, _, err = invoke(db_url, "schedule", command, "other")
        assert got == 1
        assert (
            err == "error: no schedule 'other' (schedules: nightly); see `runner schedule list`\n"
        )
    got, _, err = invoke(db_url, "drift", "other")
    assert got == 1 and "no schedule 'other'" in err


def test_list_pause_resume_run_due_drift_and_remove(db_url: str, batch: str) -> None:
    got, out, _ = invoke(
        db_url, "schedule", "add", "nightly", batch, "--cron", "30 2 * * *",
        "--timezone", "Europe/Paris", "--on-drift", "cat > drift.json",
    )  # fmt: skip
    assert got == 0 and "on drift: cat > drift.json; next tick " in out
    got, out, _ = invoke(db_url, "schedule", "list")
    assert got == 0
    assert "nightly   1 (b)   30 2 * * *   Europe/Paris   latest" in out
    assert "on drift, nightly runs: cat > drift.json" in out
    listed = json.loads(invoke(db_url, "schedule", "list", "--format", "json")[1])
    assert [(s["name"], s["catch_up"], s["paused_at"]) for s in listed] == [
        ("nightly", "latest", None)
    ]
    assert invoke(db_url, "schedule", "pause", "nightly")[1].startswith(
        "schedule nightly: batch 1 (b), '30 2 * * *' in Europe/Paris, catch-up latest, "
        "on drift: cat > drift.json; paused since "
    )
    assert invoke(db_url, "schedule", "pause", "nightly")[1].endswith("(it was paused already)\n")
    assert invoke(db_url, "schedule", "resume", "nightly")[0] == 0
    # A rehearsal of a night: 02:30 in Paris is 01:30 UTC in winter. Earlier nights were
    # missed (the schedule was made today): only the latest runs.
    now = "2031-01-10T01:30:00Z"
    got, out, err = invoke(db_url, "schedule", "run-due", "--now", now, "--work")
    assert got == 0, err
    assert out == (
        "schedule nightly: tick 2031-01-10 02:30 CET (01:30 UTC): batch 1 round 2, 3 runs queued\n"
        "drift report 1: stable\n"
    )
    assert invoke(db_url, "schedule", "run-due", "--now", now) == (0, "nothing due\n", "")
    got, out, _ = invoke(db_url, "drift", "nightly")
    assert got == 0
    lines = out.splitlines()
    assert lines[1].split() == [
        "report", "tick", "schedule", "rounds", "status", "p", "exact", "match",
        "fingerprints", "on-drift",
    ]  # fmt: skip
    assert lines[3].split()[:10] == [
        "1", "2031-01-10", "02:30", "CET", "nightly", "1->2", "stable", "-", "3/3", "(100.0%)",
    ]  # fmt: skip
    (row,) = json.loads(invoke(db_url, "drift", "--format", "json")[1])
    assert (row["status"], row["scheduled_for"], row["exact_match_rate"]) == (
        "stable", "2031-01-10T01:30:00.000000Z", 1.0,
    )  # fmt: skip
    got, out, _ = invoke(db_url, "schedule", "remove", "nightly")
    assert out == "schedule nightly removed (batch 1 and its rounds are kept)\n"
    assert invoke(db_url, "schedule", "list")[1].startswith("no schedules yet")
    assert "(removed) batch 1" in invoke(db_url, "drift")[1]
    assert count(db_url, "drift_reports") == 1


def test_submit_with_a_schedule_prints_it(db_url: str, tmp_path: Path) -> None:
    write_config(tmp_path)
    got, out, err = invoke(db_url, "submit", str(nightly_job(tmp_path, 2)))
    assert got == 0, err
    assert out.splitlines() == [
        "batch 1 (nightly): 2 jobs queued as round 1",
        "schedule nightly created: see `runner schedule list`",
    ]
    got, _, err = invoke(db_url, "submit", "--again", str(nightly_job(tmp_path, 2)))
    assert got == 2 and err.count("\n") == 1
    assert ": schedule: a schedule named 'nightly' already exists" in err
    assert (count(db_url, "batches"), count(db_url, "schedules")) == (1, 1)
