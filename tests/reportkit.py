"""Helpers for the HTML report tests (not fixtures): a scheduled history, a headless browser."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import EndpointConfig
from runner.scheduling import schedule
from runner.submit import submit
from tests.replaykit import work
from tests.schedulekit import schedule_settings

CREATED = datetime(2026, 11, 20, 12, tzinfo=UTC)
CHROMIUM = "/usr/bin/chromium"


def job_file(tmp_path: Path, count: int, name: str = "nightly") -> Path:
    """``count`` seeded jobs for the built-in model, no schedule of their own."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nmodel: test-model\n"
        "messages: [{role: user, content: 'Tell me about {topic}.'}]\n"
        f"vars: {{topic: [{', '.join(f'topic{i}' for i in range(count))}]}}\n"
        "seed: 42\nparams: {max_tokens: 24, temperature: 0.7}\n",
        encoding="utf-8",
    )
    return path


async def scheduled_history(
    engine: AsyncEngine,
    db_url: str,
    tmp_path: Path,
    variants: list[str | None],
    *,
    jobs: int = 4,
    report: str | None = None,
) -> int:
    """A batch worked once, then one scheduled night per entry of ``variants`` (the
    built-in model's variant behind the same endpoint that night: a change of variant is
    a backend update), each with its drift report. Returns the batch id."""
    settings = schedule_settings(db_url)
    sub = await submit(engine, job_file(tmp_path, jobs), settings, now=CREATED)
    await work(engine, settings, [sub.round_id])
    await schedule.add_schedule(
        engine, "nightly", str(sub.batch_id), cron="0 3 * * *", report=report, now=CREATED
    )
    for night, variant in enumerate(variants, start=1):
        tick = datetime(2026, 11, 20, 3, tzinfo=UTC) + timedelta(days=night)
        local = EndpointConfig(name="local", type="local", variant=variant)
        nightly = schedule_settings(db_url, local)
        (made,) = await schedule.tick(engine, nightly, tick)
        await work(engine, nightly, [made.round.round_id])
        result = await schedule.run_pass(engine, nightly, lambda t=tick: t, "test")
        assert len(result.reports) == 1
    return sub.batch_id


def need_chromium() -> str:
    """Chromium's path; without it the test skips, except under CI=true where it fails."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@dataclass(frozen=True)
class Page:
    """A page as headless Chromium left it once its scripts ran."""

    dom: str
    console: list[str]  # console messages and uncaught errors Chromium logged

    def attribute(self, name: str) -> str | None:
        found = re.search(rf'<body[^>]*\s{re.escape(name)}="([^"]*)"', self.dom)
        return found.group(1) if found else None

    @property
    def errors(self) -> list[str]:
        found = re.search(r'<html[^>]*\sdata-errors="([^"]*)"', self.dom)
        recorded = json.loads(html.unescape(found.group(1))) if found else []
        return recorded + [line for line in self.console if "Uncaught" in line]

    def cells(self, strip: str) -> list[tuple[int, str, str]]:
        """(round, value, background) of each cell of a timeline strip."""
        box = re.search(rf'data-strip="{strip}".*?</div></div>', self.dom, re.DOTALL)
        assert box is not None, f"no strip {strip}"
        return [
            (int(r), v, bg)
            for r, v, bg in re.findall(
                r'<div class="cell" data-round="(\d+)" data-value="([^"]*)"[^>]*'
                r'style="[^"]*background: ([^;"]+)',
                box.group(0),
            )
        ]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    command = [
        need_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--window-size=1280,2200", "--virtual-time-budget=20000", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def browse(html: Path | str, tmp_path: Path) -> Page:
    """Open ``html`` (a file, or a URL) in headless Chromium and dump the DOM after its
    scripts ran."""
    address = html if isinstance(html, str) else html.resolve().as_uri()
    done = _chromium(tmp_path, "--dump-dom", address)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    return Page(done.stdout, console)


def screenshot(html: Path, png: Path, tmp_path: Path, *, height: int = 2200) -> None:
    done = _chromium(
        tmp_path, f"--screenshot={png}", f"--window-size=1280,{height}", html.resolve().as_uri()
    )
    assert done.returncode == 0 and png.exists(), done.stderr[-2000:]
