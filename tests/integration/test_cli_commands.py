"""CLI commands through click's CliRunner, on both backends: output, errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from runner.cli import main
from tests.helpers import yaml_job


def invoke(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args])
    return result.exit_code, result.stdout, result.stderr


def test_submit_work_status_show(db_url: str, tmp_path: Path) -> None:
    code, out, _ = invoke(db_url, "status")
    assert code == 0 and "no batches yet" in out
    code, out, _ = invoke(db_url, "submit", str(yaml_job(tmp_path, 3)))
    assert code == 0 and out.strip() == "batch 1 (t): 3 jobs queued as round 1"
    code, out, _ = invoke(db_url, "status", "t")
    assert code == 0 and "0/3 done: 3 queued" in out
    code, out, _ = invoke(db_url, "work", "--burst", "--concurrency", "2")
    assert code == 0 and "3 succeeded, 0 failed" in out
    code, out, _ = invoke(db_url, "status", "--format", "json")
    (batch,) = json.loads(out)
    assert batch["rounds"][0]["counts"] == {"succeeded": 3}
    assert batch["rounds"][0]["completion_tokens"] > 0
    code, out, _ = invoke(db_url, "show", "t", "topic=topic1", "--format", "json")
    details = json.loads(out)
    assert details["state"] == "succeeded" and details["seed"] == 42
    assert details["key"] == "topic=topic1" and details["round_number"] == 1
    code, out, _ = invoke(db_url, "show", str(details["id"]))
    assert code == 0 and f"run {details['id']}: batch 1 (t) round 1" in out


def test_items_differing_only_by_their_seed_get_distinct_keys(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "seeds.yaml"
    path.write_text(
        "name: seeds\nendpoint: local\nmodel: m\nmessages: [{role: user, content: hi}]\n"
        "items: [{seed: 1}, {seed: 2}]\n",
        encoding="utf-8",
    )
    code, out, err = invoke(db_url, "submit", str(path))
    assert (code, err) == (0, ""), err
    assert out.strip() == "batch 1 (seeds): 2 jobs queued as round 1"
    for seed in (1, 2):
        code, out, _ = invoke(db_url, "show", "seeds", f"seed={seed}", "--json")
        assert code == 0 and json.loads(out)["seed"] == seed


def test_user_errors_are_one_line_with_non_zero_exit(db_url: str, tmp_path: Path) -> None:
    code, _, err = invoke(db_url, "show", "999")
    assert code == 1 and err.strip() == "error: no run 999"
    code, _, err = invoke(db_url, "status", "nope")
    assert code == 1 and "no batch 'nope'" in err
    code, _, err = invoke(db_url, "submit", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml: no such file" in err
    code, _, err = invoke(db_url, "submit", "--endpoint", "nowhere", str(yaml_job(tmp_path, 1)))
    assert code == 2 and "unknown endpoint 'nowhere'" in err
    code, _, err = invoke(db_url, "show", "not-a-number")
    assert code == 2 and "give a run id, or a batch and a job key" in err


def test_bad_config_is_a_clear_error(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "runner.toml").write_text("[worker]\nconcurrency = 0\n")
    code, _, err = invoke(db_url, "status")
    assert code == 2 and "worker.concurrency: must be an integer >= 1, got 0" in err
    (tmp_path / "runner.toml").write_text('[endpoints.x]\ntype = "openai"\napi_key = "sk-123"\n')
    code, _, err = invoke(db_url, "status")
    assert code == 2 and "api_key is not accepted" in err and "sk-123" not in err
    (tmp_path / "runner.toml").write_text("[worker\n")
    code, _, err = invoke(db_url, "status")
    assert code == 2 and "invalid TOML" in err


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    url = "postgresql://nobody:secretpw@127.0.0.1:1/none"
    code, _, err = invoke(url, "status")
    assert code == 1 and "error:" in err and "secretpw" not in err and "Traceback" not in err
