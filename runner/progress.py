"""Live progress of a worker: a rich display on a terminal, periodic lines elsewhere.

Counts per round come from the database (so they include other workers' work); rates,
requests in flight, retries and 429s come from this worker. ``--quiet`` shows nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Literal, TypeVar

import anyio
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.report import RoundProgress, rounds_progress
from runner.richtext import console
from runner.work import Worker

Mode = Literal["live", "log", "quiet"]
T = TypeVar("T")
RATE_WINDOW_SECONDS = 15.0


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Samples the worker and the database, and shows it."""

    def __init__(
        self,
        engine: AsyncEngine,
        worker: Worker,
        *,
        mode: Mode,
        interval: float,
        round_ids: Sequence[int] | None = None,
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.mode = mode
        self.interval = interval
        self.console = console(stderr=True)  # batch names print as written, never as markup
        self.round_ids = round_ids
        self._samples: deque[tuple[float, int, int]] = deque()
        self._live: Live | None = None

    async def run(self, stop: anyio.Event) -> None:
        """Show progress until ``stop`` is set, then once more (the final 100 %).

        It ends on the event, not by cancellation: cancelling it in the middle of a
        database call could leave a connection half-made at the loop's close.
        """
        if self.mode == "quiet":
            return
        if self.mode == "live":
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        try:
            while not stop.is_set():
                await self.show()
                with anyio.move_on_after(self.interval):
                    await stop.wait()
            await self.show()
        finally:
            if self._live is not None:
                self._live.stop()

    async def show(self) -> None:
        """One sample, shown: call it once more after the worker stops for the final 100 %."""
        if self.mode == "quiet":
            return
        async with self.engine.connect() as conn:
            rounds = await rounds_progress(
                conn, self.round_ids, also=sorted(self.worker.rounds_seen)
            )
        stats = self.worker.stats
        now = time.monotonic()
        done_here = stats.succeeded + stats.failed
        tokens = stats.prompt_tokens + stats.completion_tokens
        self._samples.append((now, done_here, tokens))
        while now - self._samples[0][0] > RATE_WINDOW_SECONDS and len(self._samples) > 2:
            self._samples.popleft()
        t0, d0, k0 = self._samples[0]
        span = now - t0
        rate = (done_here - d0) / span if span > 0 else 0.0
        token_rate = (tokens - k0) / span if span > 0 else 0.0
        left = sum(r.total - r.done for r in rounds)
        eta = left / rate if rate > 0 else (0.0 if left == 0 else None)
        footer = (
            f"{rate:,.1f} req/s  {token_rate:,.0f} tok/s  {self.worker.executing} in flight  "
            f"{stats.retried} retries  {self.worker.rate_limited} x 429  {stats.failed} failed  "
            f"ETA {eta_text(eta)}"
        )
        batches = self.worker.batches.summary() if self.worker.batches else None
        if batches:  # batch rounds: what their provider batches are doing
            footer += f" | {batches}"
        elif self.worker.waiting:  # burst: nothing to claim yet, say why it has not exited
            footer += f" | {self.worker.waiting}"
        if self._live is not None:
            self._live.update(self._render(rounds, footer), refresh=True)
        else:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            for line in self._lines(rounds) or ["nothing queued"]:
                self.console.print(f"{stamp} {line} | {footer}", soft_wrap=True)

    @staticmethod
    def _lines(rounds: list[RoundProgress]) -> list[str]:
        lines = []
        for r in rounds:
            percent = r.done / r.total if r.total else 1.0
            failed = r.counts.get("failed", 0)
            lines.append(
                f"batch {r.batch_id} {r.batch_name} round {r.round_number}: "
                f"{r.done}/{r.total} done ({percent:.0%})"
                + (f", {failed} failed" if failed else "")
            )
        return lines

    @staticmethod
    def _render(rounds: list[RoundProgress], footer: str) -> Group:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("batch", "round", "progress", "", "done", "failed", "queued", "running"):
            left = column in ("batch", "")
            # fold, not "…": a long batch name is shown whole, on more lines
            table.add_column(column, justify="left" if left else "right", overflow="fold")
        for r in rounds:
            percent = r.done / r.total if r.total else 1.0
            table.add_row(
                Text(f"{r.batch_id} {r.batch_name}"),
                str(r.round_number),
                ProgressBar(total=max(r.total, 1), completed=r.done, width=30),
                f"{percent:.0%}",
                f"{r.done}/{r.total}",
                str(r.counts.get("failed", 0)),
                str(r.counts.get("queued", 0)),
                str(r.counts.get("running", 0)),
            )
        return Group(table, Text(footer))


async def run_with_progress(
    engine: AsyncEngine, worker: Worker, *, mode: Mode, interval: float
) -> None:
    """Run ``worker`` to the end with progress shown, ending on a final sample."""
    progress = Progress(engine, worker, mode=mode, interval=interval, round_ids=worker.round_ids)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(progress.run, stop)
        try:
            await worker.run()
        finally:
            stop.set()


async def watch_status(
    fetch: Callable[[], Awaitable[T]], text: Callable[[T], str], interval: float
) -> None:
    """``runner status --watch``: redraw on a terminal, or print each update, until cancelled."""
    out = console()  # names, errors and our own "[prices]" print as written
    if out.is_terminal:
        with Live(console=out, auto_refresh=False) as live:
            while True:
                live.update(Text(text(await fetch())), refresh=True)
                await anyio.sleep(interval)
    while True:
        out.print(text(await fetch()), soft_wrap=True)
        out.print(f"-- every {interval:g} s; Ctrl-C to stop", style="dim")
        await anyio.sleep(interval)
