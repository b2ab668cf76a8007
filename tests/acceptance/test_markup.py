"""User text that looks like rich markup or emoji codes, through every CLI command, both backends.

A batch named ``nightly [/data/prompts.jsonl] …`` once made every worker exit 1 at start
(rich read the name as a closing tag), and ``status --watch`` dropped our own
``runner.toml [prices]``. Names, keys, models, errors, outputs and fingerprints must
print exactly as stored, on a terminal (a pseudo-terminal as stderr: the live display)
and not, and nothing may crash.

The workers (piped and on a pseudo-terminal) and ``status --watch`` stopped by SIGINT run
as separate processes; every other command runs in-process through click's CliRunner,
whose output, like a pipe, is not a terminal (a new Python process costs 1-3 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.db.types import utcnow
from runner.scheduling.cron import parse_cron
from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import in_process, on_terminal

RUNNER = [sys.executable, "-m", "runner"]
TIMEOUT = 120

NAME = "nightly [/data/prompts.jsonl] [bold]x[/bold] :smile:"
MODEL = "m [red]x[/red] :cross_mark:"
TOPICS = ("[red]", "[link=http://x]y[/link]", ":cross_mark:", "]", "[")
KEYS = tuple(f"{topic} #{item}" for topic in TOPICS for item in (0, 1))
TIER = "[bold]tier[/bold] :smile: ["  # the local model refuses it: a hostile error message
ERROR = f"Invalid value for 'service_tier': '{TIER}'."
OUTPUT = "[bold]out[/bold] [link=http://x]y[/link] :cross_mark: ] [ [/data/x.jsonl]"
FINGERPRINT = "fp[red]:smile:"
SCHEDULE = "sched [/data/x.jsonl] [bold]:smile:"
EMOJI = ("\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}", "\N{CROSS MARK}")  # rich's

JOB = f"""\
name: {json.dumps(NAME)}
model: {json.dumps(MODEL)}
messages: [{{role: user, content: 'Tell me about {{topic}}.'}}]
vars: {{topic: {json.dumps(list(TOPICS))}}}
key: "{{topic}} #{{item}}"
items: [{{}}, {{params: {{service_tier: {json.dumps(TIER)}}}}}]
seed: 1
params: {{max_tokens: 8}}
schedule: {{cron: "0 3 * * *", name: {json.dumps(SCHEDULE)}}}
"""


def reply(req: Received, n: int) -> Reply:
    """The fake provider: a hostile output (A in round 2, B in round 3) and fingerprint."""
    body = completion(json.loads(req.body), fingerprint=FINGERPRINT)
    body["choices"][0]["message"]["content"] = f"{OUTPUT} {'A' if n <= len(KEYS) else 'B'}"
    return Reply(body=body)


SCREEN = {"COLUMNS": "250", "LINES": "50", "TERM": "xterm-256color"}


def env() -> dict[str, str]:
    return {**os.environ, **SCREEN}


def cli(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One command in its own process, stdout and stderr piped (not a terminal)."""
    return subprocess.run(
        [*RUNNER, "--db", db_url, *args], cwd=tmp_path, env=env(), capture_output=True,
        text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def terminal(
    tmp_path: Path, db_url: str, *args: str, stop_when: Callable[[str], bool] | None = None
) -> tuple[int, str]:
    """One command on a pseudo-terminal (stdin, stdout, stderr): the live display path."""
    return on_terminal([*RUNNER, "--db", db_url, *args], cwd=tmp_path, env=env(),
                       limit=TIMEOUT, stop_when=stop_when)  # fmt: skip


def verbatim(out: str, *expected: str) -> None:
    """Every expected string is there as written; no markup error, emoji or traceback."""
    for text in expected:
        assert text in out, f"{text!r} not shown as written in:\n{out[-3000:]}"
    for bad in ("Traceback", "MarkupError", *EMOJI):
        assert bad not in out, out[-3000:]


def invoke(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One command in this process, output not a terminal, as ``cli`` returns it."""
    return in_process("--db", db_url, *args, cwd=tmp_path, env=SCREEN)


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == code, out[-3000:]
    return out


def watch_until_sigint(tmp_path: Path, db_url: str) -> str:
    """``status --watch`` piped: stopped with SIGINT after its first tick, exit 0."""
    proc = subprocess.Popen(
        [*RUNNER, "--db", db_url, "status", "1", "--watch", "--interval", "0.2"],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("-- every"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return "".join(lines) + out + err


@pytest.mark.timeout(300)  # six commands, each a new Python process, on a loaded machine
def test_markup_and_emoji_codes_in_user_text_print_as_written(tmp_path: Path, db_url: str) -> None:
    with fake_server(reply) as server:
        (tmp_path / "runner.toml").write_text(
            f'[endpoints.fake]\ntype = "openai"\nbase_url = "{server.base_url}"\n'
            "[worker]\npoll_seconds = 0.02\nmax_attempts = 2\n"
        )
        job = tmp_path / "job.yaml"
        job.write_text(JOB, encoding="utf-8")
        one = "--progress-interval", "0.1"

        # Round 1 on the local model, not a terminal: progress lines name the batch.
        out = ok(cli(tmp_path, db_url, "run", str(job), *one), 1)
        verbatim(
            out,
            f"batch 1 {NAME} round 1: 10/10 done (100%), 5 failed",
            "10/10 done: 5 succeeded, 5 failed",
        )
        # Round 2 on the fake provider, a burst worker on a terminal: the live display.
        ok(invoke(tmp_path, db_url, "replay", "1", "--endpoint", "fake"))
        code, screen = terminal(tmp_path, db_url, "work", "--burst", *one)
        assert code == 0, screen[-3000:]
        verbatim(screen, f"1 {NAME}", "10/10", "worker done: 10 succeeded")
        # Round 3 on the fake provider, a burst worker not on a terminal.
        ok(invoke(tmp_path, db_url, "replay", "1", "--endpoint", "fake"))
        out = ok(cli(tmp_path, db_url, "work", "--burst", *one))
        verbatim(out, f"batch 1 {NAME} round 3: 10/10 done (100%)")
        # Batch 2, the same jobs and name without the schedule: `runner run` on a terminal.
        again = tmp_path / "again.yaml"
        again.write_text(JOB.split("schedule:")[0], encoding="utf-8")
        code, screen = terminal(tmp_path, db_url, "run", str(again), *one)
        assert code == 1, screen[-3000:]
        verbatim(screen, f"2 {NAME}", "10/10", "10/10 done: 5 succeeded, 5 failed")
        # A scheduled round (4) of batch 1 and its drift report (against round 3).
        tick = parse_cron("0 3 * * *").next_after(utcnow()).isoformat()
        out = ok(invoke(tmp_path, db_url, "schedule", "run-due", "--now", tick, "--work"))
        verbatim(out, f"schedule {SCHEDULE}: tick", "batch 1 round 4", "drift report 1: failures")
        # Rounds 5 and 6 on the fake provider.
        verified = ok(invoke(tmp_path, db_url, "verify", "1", "--times", "2", "--endpoint", "fake"))
        verbatim(verified, NAME, MODEL, FINGERPRINT, *KEYS)

    counts = json.loads(ok(invoke(tmp_path, db_url, "status", "--format", "json")))
    assert [(b["id"], r["number"], r["counts"]) for b in counts for r in b["rounds"]] == [
        *((batch, n, {"failed": 5, "succeeded": 5}) for batch, n in ((2, 1), (1, 1))),
        *((1, n, {"succeeded": 10}) for n in (2, 3)),
        (1, 4, {"failed": 5, "succeeded": 5}),
        *((1, n, {"succeeded": 10}) for n in (5, 6)),
    ], counts  # every round of both batches ran to its end

    status = ok(invoke(tmp_path, db_url, "status", "1"))
    verbatim(status, f"batch 1 {NAME}  (10 jobs", "runner.toml [prices]", FINGERPRINT)
    verbatim(watch_until_sigint(tmp_path, db_url), f"batch 1 {NAME}", "runner.toml [prices]")
    code, screen = terminal(
        tmp_path, db_url, "status", "1", "--watch", "--interval", "0.2",
        stop_when=lambda s: "[prices]" in s,
    )  # fmt: skip
    assert code == 0, screen[-3000:]
    verbatim(screen, f"batch 1 {NAME}", "runner.toml [prices]")
    verbatim(ok(invoke(tmp_path, db_url, "batches")), f"1  {NAME}", f"2  {NAME}")

    failed, good = KEYS[1], KEYS[0]
    verbatim(ok(invoke(tmp_path, db_url, "show", "1", failed, "--round", "1")), failed, NAME, ERROR)
    verbatim(
        ok(invoke(tmp_path, db_url, "show", "1", good, "--round", "2")),
        good, MODEL, FINGERPRINT, f"{OUTPUT} A",
    )  # fmt: skip

    compared = ok(invoke(tmp_path, db_url, "compare", "1", "--rounds", "1", "2", "--top", "10"))
    verbatim(compared, NAME, f"{FINGERPRINT} x10", *KEYS)
    verbatim(ok(invoke(tmp_path, db_url, "diff", "1", good, "--rounds", "2", "3")), good, OUTPUT)
    verbatim(ok(invoke(tmp_path, db_url, "diff", "1", failed, "--rounds", "1", "2")), failed, ERROR)

    verbatim(ok(invoke(tmp_path, db_url, "schedule", "list")), SCHEDULE, f"1 ({NAME})")
    verbatim(ok(invoke(tmp_path, db_url, "drift")), SCHEDULE, FINGERPRINT)
    # `runner sql` table output: one column of every kind of stored user text.
    # (Runs are picked by what they are, not by id: ids follow the order runs are written.)
    first_failed = "SELECT min(run_id) FROM run_results WHERE batch_id = 1 AND state = 'failed'"
    round_2 = (
        "SELECT min(run_id) FROM run_results "
        "WHERE batch_id = 1 AND round_number = 2 AND state = 'succeeded'"
    )
    texts = {"batch_name": "run_id = 1", "job_key": "round_number = 1 AND batch_id = 1",
             "model": "run_id = 1", "error_message": f"run_id = ({first_failed})",
             "output": f"run_id = ({round_2})",
             "system_fingerprint": f"run_id = ({round_2})"}  # fmt: skip
    union = " UNION ALL ".join(
        f"SELECT {c} AS v FROM run_results WHERE {w}" for c, w in texts.items()
    )
    table = ok(invoke(tmp_path, db_url, "sql", union))
    verbatim(table, NAME, *KEYS, MODEL, ERROR, f"{OUTPUT} A", FINGERPRINT, "(15 rows)")
