"""Commands that never call an endpoint never import the openai SDK (nor aiohttp, tiktoken,
numpy, rapidfuzz or alembic): each costs from a tenth of a second to two seconds of
start-up, paid by every `runner --help` and `runner status` when the CLI imported them at
module level.

The structure is checked here, not the time (bench/startup.py measures that): one Python
process runs the commands through the real entry point one after another, then reports
which of those packages it has loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# alembic: a schema at the head revision is recognised without it (runner.db.engine).
HEAVY = ("openai", "aiohttp", "tiktoken", "numpy", "rapidfuzz", "alembic")

# Each command in the same process, through the console script's entry point
# (runner.cli:main); what it printed and its exit code are kept, then the modules loaded.
SCRIPT = """
import contextlib, io, json, sys
from runner.cli import main

done = []
for args in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(args, prog_name="runner")
        except SystemExit as exc:
            code = exc.code
    done.append([args, code, out.getvalue()])
heavy = json.loads(sys.argv[2])
print(json.dumps({"done": done, "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def commands_loading(db_url: str, commands: list[list[str]], cwd: Path) -> dict[str, object]:
    argv = [["--db", db_url, *c] if c[0] not in ("--help", "--version") else c for c in commands]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argv), json.dumps(HEAVY)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_reading_commands_never_import_the_sdk(db_url: str, tmp_path: Path) -> None:
    commands = [
        ["--help"],
        ["--version"],
        ["status"],
        ["batches"],
        ["sql", "SELECT count(*) AS runs FROM runs"],
        ["drift"],
        ["schedule", "list"],
        ["status", "--help"],
    ]
    result = commands_loading(db_url, commands, tmp_path)
    done = result["done"]
    assert isinstance(done, list)
    # Every command did its work (a command failing early would import less).
    assert [code for _, code, _ in done] == [0] * len(commands), done
    assert "Usage: runner [OPTIONS] COMMAND" in done[0][2]
    assert "runner, version" in done[1][2]
    assert "runs" in done[4][2] and "0" in done[4][2]
    assert result["loaded"] == []


def test_the_worker_loads_the_sdk_itself(tmp_path: Path) -> None:
    """Importing the worker does not import the SDK: Worker.run loads it in a thread while
    it sets up and claims, so `runner work` does not wait for it before anything else."""
    code = (
        "import sys, runner.work, runner.work.worker, runner.progress, runner.output; "
        "print(sorted(m for m in ('openai', 'aiohttp', 'tiktoken') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
