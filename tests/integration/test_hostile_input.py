"""Hostile job files (issue 15, items 2, 6 and 7) through the CLI, on both backends.

Each is refused before anything is stored, in one line `error: FILE:LINE: FIELD: problem`
with exit 2 and no traceback: values no request or column can hold, nesting that would
overflow a recursive parser, a YAML alias bomb (refused at its first alias, before
anything is expanded), and files that give more jobs than ``max_jobs``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from runner.cli import main
from tests.sqlkit import sync_engine

BASE = "name: t\nendpoint: local\nmodel: m\nmessages:\n  - role: user\n    content: hi\n"
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _line(custom_id: str = "b", **body: object) -> str:
    record = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
    return json.dumps({**record, "body": {**GOOD, **body}})


def _jsonl(bad: str) -> str:
    """A good line 1, then ``bad`` on line 2 (JSON text, so escapes stay as written)."""
    return _line("a") + "\n" + bad + "\n"


def _with(raw: str, **body: object) -> str:
    """Line 2 with ``"x": RAW`` in its body: JSON text json.dumps would never write."""
    return _line(**body).replace('"model": "m"', f'"x": {raw}, "model": "m"')


DEEP = "[" * 100_000
HUGE = "1" * 5000
# (id, file suffix, content, line, "field: problem" the error line must contain)
CASES = [
    ("yaml-seed-2**63", "yaml", BASE + f"seed: {2**63}\n", 7, "seed: must be a 64-bit signed"),
    ("yaml-seed--2**63-1", "yaml", BASE + f"seeds: [1, {-(2**63) - 1}]\n", 7,
     "seeds[1]: must be a 64-bit signed"),
    ("yaml-item-seed-2**63", "yaml", BASE + f"items:\n  - seed: {2**63}\n", 8,
     "items[0].seed: must be a 64-bit signed"),
    ("yaml-nan", "yaml", BASE + "extra_params:\n  x: .nan\n", 8,
     "extra_params.x: nan is not a JSON number"),
    ("yaml-infinity", "yaml", BASE + "extra_params:\n  x: {y: [.inf]}\n", 8,
     "extra_params.x.y[0]: inf is not a JSON number"),
    ("yaml--infinity", "yaml", BASE + "extra_params:\n  x: -.inf\n", 8,
     "extra_params.x: -inf is not a JSON number"),
    ("yaml-surrogate", "yaml", BASE.replace("content: hi", 'content: "\\ud800"'), 6,
     "messages[0].content: contains a lone surrogate (\\ud800)"),
    ("yaml-deep", "yaml", BASE + "extra_params:\n  x: " + DEEP + "\n", 8,
     "invalid YAML: nested more than 100 levels deep"),
    ("yaml-nul", "yaml", BASE + 'vars:\n  x: ["a\\0b"]\n', 8, "vars.x[0]: contains a NUL"),
    ("yaml-date", "yaml", BASE + "extra_params:\n  x: 2024-01-01\n", 8,
     "extra_params.x: a date is not a JSON value"),
    ("yaml-int-keys", "yaml", BASE + "extra_params:\n  x: {1: a, b: c}\n", 8,
     "extra_params.x: mapping keys must be strings"),
    ("yaml-huge-int", "yaml", BASE + f"extra_params:\n  x: {HUGE}\n", 8,
     "invalid YAML: Exceeds the limit (4300 digits)"),
    ("yaml-max-attempts", "yaml", BASE + f"max_attempts: {2**40}\n", 7,
     "max_attempts: must be an integer from 1 to 2147483647"),
    ("yaml-long-model", "yaml", BASE.replace("model: m", "model: " + "m" * 201), 3,
     "model: must be at most 200 characters"),
    ("jsonl-seed-2**63", "jsonl", _jsonl(_line(seed=2**63)), 2,
     "body.seed: must be a 64-bit signed"),
    ("jsonl-seed--2**63-1", "jsonl", _jsonl(_line(seed=-(2**63) - 1)), 2,
     "body.seed: must be a 64-bit signed"),
    ("jsonl-nan", "jsonl", _jsonl(_with("NaN")), 2, "body.x: nan is not a JSON number"),
    ("jsonl-infinity", "jsonl", _jsonl(_with("Infinity")), 2, "body.x: inf is not"),
    ("jsonl--infinity", "jsonl", _jsonl(_with("[-Infinity]")), 2, "body.x[0]: -inf is not"),
    ("jsonl-1e400", "jsonl", _jsonl(_with("1e400")), 2, "body.x: inf is not a JSON number"),
    ("jsonl-surrogate", "jsonl", _jsonl(_with('"\\ud800"')), 2,
     "body.x: contains a lone surrogate (\\ud800)"),
    ("jsonl-deep", "jsonl", _jsonl(_with(DEEP)), 2,
     "invalid JSON: nested more than 100 levels deep"),
    ("jsonl-nul-custom_id", "jsonl", _jsonl(_line("a\\u0000b").replace("\\\\", "\\")), 2,
     "custom_id: contains a NUL"),
    ("jsonl-nul-model", "jsonl", _jsonl(_line(model="m\x00")), 2, "body.model: contains a NUL"),
    ("jsonl-huge-int", "jsonl", _jsonl(_with(HUGE)), 2,
     "invalid JSON: Exceeds the limit (4300 digits)"),
    ("jsonl-long-model", "jsonl", _jsonl(_line(model="m" * 201)), 2,
     "body.model: must be at most 200 characters"),
]  # fmt: skip


def _invoke(db_url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--db", db_url, *args], env=env)


def _stored(db_url: str) -> dict[str, int]:
    with sync_engine(db_url) as engine, engine.connect() as conn:
        return {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("batches", "jobs", "rounds", "runs", "schedules")
        }


NOTHING = {"batches": 0, "jobs": 0, "rounds": 0, "runs": 0, "schedules": 0}


def _refused(result: Result, path: Path, line: int | None, what: str) -> None:
    """Exit 2 with one line naming file and line, and no traceback."""
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert result.exit_code == 2, result.stderr
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert result.stderr.startswith(f"error: {where}"), result.stderr
    assert what in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(("suffix", "content", "line", "what"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])  # fmt: skip
def test_hostile_values_are_refused_in_one_line_and_store_nothing(
    db_url: str, tmp_path: Path, suffix: str, content: str, line: int, what: str
) -> None:
    path = tmp_path / f"hostile.{suffix}"
    path.write_text(content, encoding="utf-8")
    _refused(_invoke(db_url, "submit", "--endpoint", "local", str(path)), path, line, what)
    assert _stored(db_url) == NOTHING


def test_runner_run_refuses_them_too(db_url: str, tmp_path: Path) -> None:
    for _, suffix, content, line, what in (CASES[0], CASES[16]):
        path = tmp_path / f"hostile.{suffix}"
        path.write_text(content, encoding="utf-8")
        _refused(_invoke(db_url, "run", "--endpoint", "local", str(path)), path, line, what)
    assert _stored(db_url) == NOTHING


def alias_bomb(path: Path) -> Path:
    """Nine nested aliases of nine: 9^9 (387 million) nodes for any walk that expands them."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    # Past the bomb, a syntax error: a parser that read on would report it instead.
    lines.append("z: [unclosed")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_alias_bomb_is_refused_at_its_first_alias(db_url: str, tmp_path: Path) -> None:
    path = alias_bomb(tmp_path / "bomb.yaml")
    result = _invoke(db_url, "submit", str(path))
    # Line 2 holds the first alias: refused there, before anything after it was read.
    _refused(result, path, 2, "invalid YAML: aliases (*a) are not supported")
    assert _stored(db_url) == NOTHING


def test_more_jobs_than_max_jobs_is_refused_before_any_is_built(
    db_url: str, tmp_path: Path
) -> None:
    # 10^8 jobs: refused from the counts alone (building them would take hours).
    path = tmp_path / "huge.yaml"
    path.write_text(BASE + "repeat: 100000000\n", encoding="utf-8")
    _refused(
        _invoke(db_url, "submit", str(path)),
        path,
        None,
        "expands into 100,000,000 jobs, more than max_jobs (10,000,000) allows in one submit",
    )
    small = tmp_path / "four.yaml"
    small.write_text(BASE + "repeat: 4\n", encoding="utf-8")
    _refused(_invoke(db_url, "submit", "--max-jobs", "3", str(small)), small, None, "(3)")
    config = tmp_path / "runner.toml"
    config.write_text("[submit]\nmax_jobs = 2\n", encoding="utf-8")
    _refused(_invoke(db_url, "run", str(small), env={"RUNNER_CONFIG": str(config)}), small,
             None, "expands into 4 jobs, more than max_jobs (2)")  # fmt: skip
    assert _stored(db_url) == NOTHING
    assert _invoke(db_url, "submit", "--max-jobs", "4", str(small)).exit_code == 0


def test_max_jobs_refuses_a_batch_file_at_the_line_past_it(db_url: str, tmp_path: Path) -> None:
    # More than two of SQLite's write chunks before the error: they must go again.
    path = tmp_path / "many.jsonl"
    path.write_text("".join(_line(f"j{i}") + "\n" for i in range(12_001)), encoding="utf-8")
    result = _invoke(db_url, "submit", str(path), env={"RUNNER_MAX_JOBS": "12000"})
    _refused(result, path, 12_001, "more jobs than max_jobs (12,000) allows in one submit")
    assert _stored(db_url) == NOTHING
