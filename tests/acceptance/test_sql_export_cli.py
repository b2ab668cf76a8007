"""`runner sql` and `runner export` through the real binary: a pipe, a closed reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import in_process
from tests.sqlkit import batch_file

RUNNER = [sys.executable, "-m", "runner"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNNER, *args], cwd=cwd, env=dict(os.environ), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_sql_and_export_stream_to_a_pipe_and_stop_quietly_when_it_closes(tmp_path: Path) -> None:
    keys = tuple(f"request-{i}" for i in range(300))
    done = in_process("run", str(batch_file(tmp_path / "batch.jsonl", keys)), "--endpoint",
                      "local", "--quiet", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    counted = run("sql", "SELECT count(*) AS n FROM run_results", "--format", "csv", cwd=tmp_path)
    assert (counted.returncode, counted.stdout) == (0, "n\n300\n")

    # A reader that stops after one line (`| head -1`): no traceback, exit 1.
    with subprocess.Popen(
        [*RUNNER, "export", "batch", "--format", "openai-batch"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        first = json.loads(proc.stdout.readline())
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=60)
    assert first["custom_id"] == "request-0" and first["response"]["status_code"] == 200
    assert (code, err) == (1, "")

    whole = in_process("export", "batch", "--format", "openai-batch", cwd=tmp_path)
    lines = [json.loads(line) for line in whole.stdout.splitlines()]
    assert [line["custom_id"] for line in lines] == list(keys)
