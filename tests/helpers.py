"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.cli import main
from runner.config import EndpointConfig, Settings, WorkerConfig, load_settings
from runner.db import engine as db
from runner.submit import Submitted, submit


def yaml_job(tmp_path: Path, count: int, *, name: str = "t", extra: str = "") -> Path:
    """A job file of ``count`` seeded jobs for the local model."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nmodel: test-model\n"
        "messages: [{role: user, content: 'Tell me about {topic}.'}]\n"
        f"vars: {{topic: [{', '.join(f'topic{i}' for i in range(count))}]}}\n"
        "seed: 42\nparams: {max_tokens: 16, temperature: 0.7}\n" + extra,
        encoding="utf-8",
    )
    return path


async def submit_jobs(
    engine: AsyncEngine, tmp_path: Path, count: int, settings: Settings | None = None, **kw: Any
) -> Submitted:
    return await submit(engine, yaml_job(tmp_path, count, **kw), settings or load_settings())


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql), params))


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def wait_for(condition: Callable[[], bool], limit: float = 10) -> None:
    """Poll ``condition`` (state owned by another thread or process) until it holds."""
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - the state lives outside this event loop
            await anyio.sleep(0.01)


# Runs whose succeeded attempts are not exactly one if the run succeeded, none otherwise
# (a --reuse copy made no request: it has no attempts). Must be empty after any crash,
# cancel or race: a result thrown away is logged as 'discarded', never 'succeeded'.
SUCCESS_ATTEMPTS_MISMATCH = """
SELECT r.id, r.state, (
    SELECT count(*) FROM attempts a WHERE a.run_id = r.id AND a.outcome = 'succeeded'
) AS succeeded_attempts
FROM runs r
WHERE r.reused_from_run_id IS NULL AND (
    SELECT count(*) FROM attempts a WHERE a.run_id = r.id AND a.outcome = 'succeeded'
) <> CASE WHEN r.state = 'succeeded' THEN 1 ELSE 0 END
"""


def write_endpoint(tmp_path: Path, name: str, *lines: str, etype: str = "local") -> None:
    """runner.toml in ``tmp_path`` with one endpoint ``name`` of type ``etype`` and the
    TOML ``lines`` as its keys (an 'openai' one gets an unreachable base_url)."""
    text = "\n".join([f"[endpoints.{name}]", f'type = "{etype}"', *lines, ""])
    if etype == "openai":
        text += 'base_url = "http://127.0.0.1:1/v1"\n'
    (tmp_path / "runner.toml").write_text(text, encoding="utf-8")


def in_process(
    *args: str, cwd: Path, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``runner ARGS`` in this process (click's CliRunner), as ``subprocess.run`` returns it.

    For the commands of an acceptance test that need not be a process of their own: a new
    Python process costs 1-3 s. The output is not a terminal, as with a pipe. ``env``
    adds variables (None removes one). An exception other than an exit fails the test
    with its traceback, which CliRunner would keep off the output.
    """
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def on_terminal(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    limit: float = 120,
    stop_when: Callable[[str], bool] | None = None,
) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdin, stdout and stderr (rich's live path).

    Returns its exit code and what the terminal showed, without escape sequences or
    carriage returns. With ``stop_when``, the command gets SIGINT once that holds.
    """
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        args, cwd=cwd, stdin=follower, stdout=follower, stderr=follower, env=env,
        close_fds=True,
    )  # fmt: skip
    os.close(follower)
    raw, interrupted = b"", False
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
            if stop_when and not interrupted and stop_when(_shown(raw)):
                proc.send_signal(signal.SIGINT)
                interrupted = True
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(30), _shown(raw)


def _shown(screen: bytes) -> str:
    """What a terminal shows, without escape sequences and carriage returns."""
    text = screen.decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", text)


def sql(db_url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of ``query``, read from outside any event loop (as another process would)."""
    engine = db.create_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query))]
    finally:
        engine.dispose()


def with_fake(db_url: str, base_url: str, *, timeout: float = 10, **worker: Any) -> Settings:
    """Settings with an endpoint ``fake`` at ``base_url`` and these worker settings."""
    base = load_settings(database_url=db_url)
    fake = EndpointConfig(name="fake", type="openai", base_url=base_url, timeout=timeout)
    return replace(base, endpoints={**base.endpoints, "fake": fake}, worker=WorkerConfig(**worker))


def runner_process(cwd: Path, db_url: str, *args: str) -> subprocess.Popen[str]:
    """``runner --db DB_URL ARGS...`` in a process of its own, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "--db", db_url, *args],
        cwd=cwd,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def succeeded(db_url: str) -> int:
    """Runs that succeeded, in every batch."""
    ((count,),) = sql(db_url, "SELECT count(*) FROM runs WHERE state = 'succeeded'")
    return int(count)
