"""Helpers for the replay / compare / verify tests (not fixtures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import anyio
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.cli import main
from runner.config import EndpointConfig, Settings, WorkerConfig, load_settings
from runner.work import Worker

FAST = WorkerConfig(
    concurrency=8, poll_seconds=0.02, heartbeat_seconds=0.2, lease_seconds=5,
    backoff_base_seconds=0.01, backoff_max_seconds=0.05, max_attempts=2, grace_seconds=5,
)  # fmt: skip


def remote(name: str, base_url: str) -> EndpointConfig:
    """An OpenAI-compatible endpoint without an API key (local test servers need none)."""
    return EndpointConfig(name=name, type="openai", base_url=base_url, timeout=10)


def settings_with(db_url: str, *endpoints: EndpointConfig) -> Settings:
    base = load_settings(database_url=db_url)
    extra = {e.name: e for e in endpoints}
    return replace(base, endpoints={**base.endpoints, **extra}, worker=FAST)


async def work(engine: AsyncEngine, settings: Settings, round_ids: Sequence[int]) -> None:
    with anyio.fail_after(60):
        stats = await Worker(engine, settings, burst=True, round_ids=list(round_ids)).run()
    assert stats.released == 0


def write_config(tmp_path: Path, *endpoints: EndpointConfig) -> None:
    """runner.toml in the working directory (tests run in tmp_path) for CLI tests."""
    lines = ["[worker]", "poll_seconds = 0.02", "max_attempts = 2", ""]
    for e in endpoints:
        lines += [f"[endpoints.{e.name}]", f'type = "{e.type}"']
        if e.base_url:
            lines.append(f'base_url = "{e.base_url}"')
        if e.variant:
            lines.append(f'variant = "{e.variant}"')
        lines.append("")
    (tmp_path / "runner.toml").write_text("\n".join(lines), encoding="utf-8")


def invoke(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr
