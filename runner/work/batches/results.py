"""A provider batch's results stored: every line an attempt, the runs left without one
queued again.

The output and error files are streamed line by line (``BatchAPI.lines``); each line is
mapped back to its run by ``custom_id`` (run and attempt) and turned into an outcome
(``lines``), and the outcomes are stored ``STORE_LINES`` at a time through
``queue.record`` under the chunk's owner name, fenced like any store: a line of a run no
longer held (cancelled meanwhile) is not stored, and a store repeated after a crash
keeps nothing twice. Runs the files do not answer (expired, cancelled, a failed
validation, lost) are retried like a retryable error.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import WorkerConfig
from runner.db.models import AttemptOutcome, Via
from runner.db.queue import Outcome, record
from runner.db.queue import batches as chunks
from runner.db.queue.batches import Chunk
from runner.endpoints import EndpointError, ErrorKind
from runner.work.batches.lines import Held, Turnaround, failure, success
from runner.work.stats import WorkerStats

if TYPE_CHECKING:
    from runner.endpoints.batch import BatchAPI

log = logging.getLogger("runner.worker")

STORE_LINES = 500  # result lines stored per transaction
# A testing aid (tests/acceptance/test_batch_crash.py): the worker kills itself with
# SIGKILL at this point of a chunk, to test that another worker takes it over.
KILL_AT_ENV = "RUNNER_TEST_BATCH_KILL_AT"

Step = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


def kill_point(point: str) -> None:
    """SIGKILL this process here if ``RUNNER_TEST_BATCH_KILL_AT`` names ``point``."""
    wanted = os.environ.get(KILL_AT_ENV, "")
    if wanted.split(":")[0] == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _store_lines() -> int:
    """Lines stored per transaction (the kill point ``mid-store:N`` makes it N)."""
    wanted = os.environ.get(KILL_AT_ENV, "")
    if wanted.startswith("mid-store:") and wanted.split(":")[1].isdigit():
        return max(1, int(wanted.split(":")[1]))
    return STORE_LINES


class ChunkResults:
    """Stores the results of a worker's provider batches (see the module doc)."""

    def __init__(
        self, engine: AsyncEngine, config: WorkerConfig, stats: WorkerStats, db: Step
    ) -> None:
        self.engine = engine
        self.config = config
        self.stats = stats
        self._db = db

    async def _held(self, chunk: Chunk) -> dict[int, Held]:
        rows = await self._db(
            "reading a provider batch's runs", lambda: chunks.held_runs(self.engine, chunk.id)
        )
        return {run_id: Held(attempt, most) for run_id, attempt, most in rows}

    async def store(self, api: BatchAPI, chunk: Chunk, retry_via: str) -> tuple[int, int]:
        """Every line of the chunk's output and error files, then its runs with no line;
        returns (lines stored, runs queued again)."""
        held = await self._held(chunk)
        assert chunk.submitted_at is not None and chunk.ended_at is not None
        times = Turnaround(chunk.submitted_at, chunk.ended_at)
        group: list[Outcome] = []
        stored = 0
        size = _store_lines()
        for file_id in (chunk.output_file_id, chunk.error_file_id):
            if file_id is None:
                continue
            async for line in api.lines(file_id):
                outcome = self._outcome(line, held, times, retry_via)
                if outcome is None:
                    continue
                group.append(outcome)
                if len(group) >= size:
                    stored += await self._record(chunk, group)
                    group = []
                    kill_point("mid-store")
                kill_point("mid-download")
        stored += await self._record(chunk, group)
        # Runs with no line: expired, cancelled, failed validation, or lost by the provider.
        left = [
            self._no_line(chunk, run_id, h, times, retry_via)
            for run_id, h in held.items()
            if h.attempt >= 0
        ]
        return stored, await self._record(chunk, left)

    async def fail_all(self, chunk: Chunk, exc: EndpointError, now: datetime) -> None:
        """The chunk's runs fail with ``exc`` (the provider refused the chunk for good)."""
        held = await self._held(chunk)
        times = Turnaround(now, now)
        outcomes = [
            failure(
                run_id,
                Held(h.attempt, h.attempt),
                exc,
                times,
                config=self.config,
                retry_via=Via.BATCH.value,
            )
            for run_id, h in held.items()
        ]
        for outcome in outcomes:
            self._count(outcome)
        await self._record(chunk, outcomes)

    def _outcome(
        self, line: str, held: dict[int, Held], times: Turnaround, retry_via: str
    ) -> Outcome | None:
        from runner.endpoints.batch import line_result  # the openai SDK, loaded by then

        try:
            cid, result = line_result(line, lambda text: text)
        except ValueError as exc:
            log.warning("a provider batch result line was not understood: %s", exc)
            return None
        ids = chunks.parse_custom_id(cid)
        if ids is None or ids[0] not in held or held[ids[0]].attempt != ids[1]:
            return None  # not a line of a run this chunk still holds (cancelled)
        run_id = ids[0]
        h = held[run_id]
        held[run_id] = Held(-1, h.max_attempts)  # seen: not requeued at the end
        if isinstance(result, EndpointError):
            outcome = failure(run_id, h, result, times, config=self.config, retry_via=retry_via)
            self._count(outcome)
            return outcome
        self.stats.succeeded += 1
        self.stats.prompt_tokens += result.prompt_tokens or 0
        self.stats.completion_tokens += result.completion_tokens or 0
        return success(run_id, h, result, times)

    def _no_line(
        self, chunk: Chunk, run_id: int, h: Held, times: Turnaround, retry_via: str
    ) -> Outcome:
        status = chunk.provider_state or "ended"
        why = {
            "expired": "its provider batch expired before this line was executed",
            "cancelled": "its provider batch was cancelled before this line was executed",
            "failed": f"its provider batch failed: {chunk.errors or 'no reason given'}",
        }.get(status, f"its provider batch ended ({status}) without a line for it")
        code = "batch_line_missing" if status == "completed" else f"batch_{status}"
        exc = EndpointError(ErrorKind.RETRYABLE, code, why)
        outcome = failure(run_id, h, exc, times, config=self.config, retry_via=retry_via)
        self._count(outcome)
        return outcome

    def _count(self, outcome: Outcome) -> None:
        if outcome.outcome == AttemptOutcome.RETRY.value:
            self.stats.retried += 1
        else:
            self.stats.failed += 1

    async def _record(self, chunk: Chunk, outcomes: list[Outcome]) -> int:
        if not outcomes:
            return 0
        discarded = await self._db(
            "storing provider batch lines",
            lambda: record(self.engine, chunk.owner, outcomes, again=True),
        )
        for outcome in discarded:
            self.stats.discarded(outcome)
        return len(outcomes) - len(discarded)
