"""Issue 14, defects 2 and 11 through click's CliRunner, on both backends: one-line
errors for an unknown endpoint or an unreachable database, ``--format json`` on status
and show, ``show`` printing null and the request body, and read commands that never
create a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.test_user_errors import remote_job
from tests.helpers import yaml_job
from tests.integration.test_cli_commands import invoke

KNOWN = "(configured: local, openai); add [endpoints.nowhere] to runner.toml"


def test_an_unknown_endpoint_names_the_file_line_or_the_flag(db_url: str, tmp_path: Path) -> None:
    job = tmp_path / "nope.yaml"
    job.write_text(
        "name: nope\nendpoint: nowhere\nmodel: m\nmessages: [{role: user, content: hi}]\n"
    )
    for command in ("submit", "run"):
        code, _, err = invoke(db_url, command, str(job))
        assert code == 2
        assert err.splitlines() == [f"error: {job}:2: endpoint: unknown endpoint 'nowhere' {KNOWN}"]
        code, _, err = invoke(db_url, command, "--endpoint", "nowhere", str(remote_job(tmp_path)))
        assert code == 2
        assert err.splitlines() == [f"error: --endpoint: unknown endpoint 'nowhere' {KNOWN}"]
    code, out, _ = invoke(db_url, "batches")
    assert code == 0 and "no batches yet" in out


@pytest.mark.parametrize("command", [("work", "--burst"), ("status",), ("batches",)])
def test_an_unreachable_database_is_one_line(command: tuple[str, ...]) -> None:
    code, _, err = invoke("postgresql://postgres:secretpw@127.0.0.1:1/nothing", *command)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith(
        "error: cannot open the database postgresql://postgres:***@127.0.0.1:1/nothing: "
    )
    assert "Connection refused" in line and "secretpw" not in line


def test_status_and_show_take_format_json_and_still_json(db_url: str, tmp_path: Path) -> None:
    assert invoke(db_url, "run", "--quiet", str(yaml_job(tmp_path, 2)))[0] == 0
    code, out, _ = invoke(db_url, "status", "t", "--format", "json")
    assert code == 0
    (batch,) = json.loads(out)
    assert batch["rounds"][0]["counts"] == {"succeeded": 2}
    code, out, _ = invoke(db_url, "show", "t", "topic=topic1", "--format", "json")
    assert code == 0 and json.loads(out)["key"] == "topic=topic1"
    # --json, as scripts wrote it before: hidden from --help, still the same JSON.
    assert json.loads(invoke(db_url, "status", "t", "--json")[1]) == [batch]
    assert json.loads(invoke(db_url, "show", "t", "topic=topic1", "--json")[1]) == json.loads(out)
    for command in ("status", "show"):
        help_text = invoke(db_url, command, "--help")[1]
        assert "--format [text|json]" in help_text and "--json" not in help_text


def test_show_prints_null_and_the_request_body(db_url: str, tmp_path: Path) -> None:
    job = tmp_path / "plain.yaml"
    job.write_text("model: m\nmessages: [{role: user, content: hi}]\n")  # no seed: null
    assert invoke(db_url, "submit", str(job))[0] == 0
    code, out, _ = invoke(db_url, "show", "1")
    assert code == 0 and "None" not in out
    assert "seed: null  system_fingerprint: null" in out
    assert "returned: null" in out
    stored = json.loads(invoke(db_url, "show", "1", "--format", "json")[1])
    # The body exactly as sent: the canonical JSON text the request hash is over.
    assert out.splitlines()[-2:] == ["--- request body ---", stored["body"]]
    assert json.loads(stored["body"]) == {
        "messages": [{"content": "hi", "role": "user"}],
        "model": "m",
    }


READ_COMMANDS = [
    ("batches",),
    ("status",),
    ("show", "1"),
    ("sql", "SELECT 1"),
    ("export", "1"),
    ("compare", "t"),
    ("diff", "t", "k"),
    ("drift",),
    ("schedule", "list"),
    ("cancel", "t"),
    ("retry", "t", "--failed"),
    ("replay", "t"),
    ("db", "current"),
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c))
def test_a_command_that_reads_never_creates_a_sqlite_file(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    missing = tmp_path / "typo" / "runer.db"
    code, _, err = invoke(f"sqlite:///{missing}", *command)
    assert code == 1
    assert err.splitlines() == [
        f"error: no database at {missing}: check --db or RUNNER_DATABASE_URL "
        "(this command never creates one; `runner submit` does)"
    ]
    assert not (tmp_path / "typo").exists()


def test_commands_that_queue_work_still_create_the_sqlite_file(tmp_path: Path) -> None:
    first = tmp_path / "new" / "runner.db"
    code, out, _ = invoke(f"sqlite:///{first}", "submit", str(yaml_job(tmp_path, 1)))
    assert code == 0 and "batch 1 (t)" in out and first.is_file()
    code, _, _ = invoke(f"sqlite:///{tmp_path / 'w.db'}", "work", "--burst", "--quiet")
    assert code == 0 and (tmp_path / "w.db").is_file()
