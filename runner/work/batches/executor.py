"""The Batch API executor: a side task of ``runner work`` that sends batch rounds in
provider batches and stores their lines as attempts.

A chunk (``provider_batches``) goes through its states one step at a time, each step
recorded before the next one that could be lost (``runner.db.queue.batches``):

``preparing``  its runs are claimed: write the input file (``lines``), leave out what
               passes ``batch_max_bytes``, upload it (``client.files.create``);
``uploaded``   its file id is recorded: create the provider batch
               (``client.batches.create``, metadata ``runner_round``/``runner_chunk``),
               unless one already names this chunk or file (a worker died between
               creating it and recording its id: ``client.batches.list`` finds it);
``submitted``  its batch id is recorded: poll it, with backoff, until it ends; a chunk
               whose runs were all cancelled has its provider batch cancelled;
``storing``    it ended: stream its output and error files and store each line as an
               attempt (fenced on the chunk's runs, so a result of a run cancelled
               meanwhile is never stored, and a store repeated after a crash keeps
               nothing twice); runs with no line go back to the queue;
``done``.

A worker killed anywhere leaves the chunk leased until its lease runs out; then any
worker takes it over at the state it was left in. A custom_id names a run and an
attempt, and a run goes in a new chunk only with a new attempt: no line is sent twice.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import EndpointConfig, Settings
from runner.db.models import ProviderBatchState
from runner.db.queue import batches as chunks
from runner.db.queue.batches import Chunk
from runner.endpoints import EndpointError, ErrorKind
from runner.work.batches.lines import write_input
from runner.work.batches.results import ChunkResults, kill_point
from runner.work.stats import WorkerStats

if TYPE_CHECKING:  # the openai SDK: imported when a batch round is first advanced
    from runner.endpoints.batch import BatchAPI, ProviderBatch
    from runner.endpoints.client import EndpointPool

T = TypeVar("T")
# The worker's database step: tried again through an outage, each try shielded.
Step = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
log = logging.getLogger("runner.worker")

FIRST_POLL_SECONDS = 0.2  # a new provider batch is polled after this, then less often
POLL_GROWTH = 1.5
ERROR_PAUSE_SECONDS = 5.0  # a provider call that failed (retryably) is tried again after this
FIND_SLACK_SECONDS = 600  # clocks of ours and the provider's may differ by this much


class BatchExecutor:
    """Advances provider batches for one worker (see the module doc)."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        owner: str,
        clock: Callable[[], datetime],
        db: Step,
        stats: WorkerStats,
        pool: Callable[[], Awaitable[EndpointPool]],
        round_ids: Sequence[int] | None,
        stop: anyio.Event,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.config = settings.worker
        self.owner = owner
        self.clock = clock
        self._db = db
        self.stats = stats
        self.pool = pool
        self.round_ids = round_ids
        self._stop = stop
        self._lease = timedelta(seconds=self.config.lease_seconds)
        self._held: dict[int, Chunk] = {}
        self._due: dict[int, float] = {}  # chunk id -> anyio time of its next step
        self._wait: dict[int, float] = {}  # chunk id -> its current poll interval
        self._uploaded: set[int] = set()  # chunks whose input this worker uploaded
        self._results = ChunkResults(engine, self.config, stats, db)
        self._tmp = Path(tempfile.gettempdir())

    # ------------------------------------------------------------ the loop

    @property
    def held(self) -> int:
        """Provider batches this worker advances now."""
        return len(self._held)

    def summary(self) -> str | None:
        """The provider batches it advances, by status (for the progress display)."""
        if not self._held:
            return None
        states = Counter(c.provider_state or c.state for c in self._held.values())
        return "provider batches: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as group:
                # Renewed beside the steps: an upload or a store may outlast a lease.
                group.start_soon(self._renew_loop)
                while not self._stop.is_set():
                    await self._take_over()
                    await self._claim_new()
                    await self._advance_due()
                    await self._sleep(self._next_wake())
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                ids = list(self._held)
                if ids:
                    with anyio.move_on_after(10):
                        await chunks.release_chunks(self.engine, self.owner, ids, self.clock())

    def _next_wake(self) -> float:
        now = anyio.current_time()
        soonest = min(self._due.values(), default=now + self.config.poll_seconds * 2)
        return max(0.0, min(soonest - now, self.config.poll_seconds * 2))

    async def _sleep(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._stop.wait()

    async def _step(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        result: T = await self._db(what, fn)
        return result

    async def _renew_loop(self) -> None:
        while not self._stop.is_set():
            await self._sleep(self.config.heartbeat_seconds)
            await self._renew()

    async def _renew(self) -> None:
        ids = list(self._held)
        kept = await self._step(
            "renewing provider batch leases",
            lambda: chunks.renew_chunks(
                self.engine, self.owner, ids, now=self.clock(), lease=self._lease
            ),
        )
        for chunk_id in ids:
            if chunk_id not in kept:
                self._forget(chunk_id)

    async def _take_over(self) -> None:
        found = await self._step(
            "taking over provider batches",
            lambda: chunks.take_over_chunks(
                self.engine,
                self.owner,
                now=self.clock(),
                lease=self._lease,
                round_ids=self.round_ids,
            ),
        )
        for chunk in found:
            if chunk.id not in self._held:
                log.info(
                    "worker %s: took over provider batch chunk %d (round %d, %s) left %s",
                    self.owner,
                    chunk.id,
                    chunk.round_id,
                    chunk.endpoint,
                    chunk.state,
                )
            self._hold(chunk)

    async def _claim_new(self) -> None:
        while not self._stop.is_set():
            chunk = await self._step(
                "claiming runs for a provider batch",
                lambda: chunks.claim_chunk(
                    self.engine,
                    self.owner,
                    now=self.clock(),
                    lease=self._lease,
                    max_requests=lambda e: self._endpoint(e).batch_max_requests,
                    round_ids=self.round_ids,
                    exclude_endpoints=list(self.stats.disabled_endpoints),
                ),
            )
            if chunk is None:
                return
            self._hold(chunk)
            await self._advance(chunk)

    def _hold(self, chunk: Chunk) -> None:
        self._held[chunk.id] = chunk
        self._due.setdefault(chunk.id, anyio.current_time())

    def _forget(self, chunk_id: int) -> None:
        self._held.pop(chunk_id, None)
        self._due.pop(chunk_id, None)
        self._wait.pop(chunk_id, None)

    def _endpoint(self, name: str) -> EndpointConfig:
        return self.settings.endpoint(name)

    async def _advance_due(self) -> None:
        now = anyio.current_time()
        for chunk_id, due in sorted(self._due.items(), key=lambda item: item[1]):
            if self._stop.is_set():
                return
            if due <= now and chunk_id in self._held:
                await self._advance(self._held[chunk_id])

    async def _advance(self, chunk: Chunk) -> None:
        """Steps of one chunk until it must wait (for the provider, or after an error)."""
        from runner.endpoints.batch import BatchAPI

        api = BatchAPI((await self.pool()).get(chunk.endpoint))
        try:
            while chunk.id in self._held and not self._stop.is_set():
                moved = await self._one_step(api, self._held[chunk.id])
                if not moved:
                    return
        except EndpointError as exc:
            if exc.kind is ErrorKind.PERMANENT and chunk.state != ProviderBatchState.STORING:
                await self._give_up(self._held.get(chunk.id, chunk), exc)
                return
            log.warning(
                "provider batch chunk %d (%s): %s: %s; trying again in %g s",
                chunk.id,
                chunk.endpoint,
                exc.error_type,
                exc.message,
                ERROR_PAUSE_SECONDS,
            )
            self._due[chunk.id] = anyio.current_time() + ERROR_PAUSE_SECONDS

    async def _one_step(self, api: BatchAPI, chunk: Chunk) -> bool:
        """One step; True if the chunk moved on (its next step may follow at once)."""
        state = ProviderBatchState(chunk.state)
        if state is ProviderBatchState.PREPARING:
            return await self._prepare(api, chunk)
        if state is ProviderBatchState.UPLOADED:
            return await self._create(api, chunk)
        if state is ProviderBatchState.SUBMITTED:
            return await self._poll(api, chunk)
        if state is ProviderBatchState.STORING:
            await self._store(api, chunk)
            return False
        self._forget(chunk.id)
        return False

    async def _moved(self, chunk: Chunk, expect: ProviderBatchState, **values: object) -> bool:
        """Record a step; a chunk that passed to another worker is dropped."""
        ok = await self._step(
            "recording a provider batch step",
            lambda: chunks.advance_chunk(self.engine, chunk, self.owner, expect=expect, **values),
        )
        if not ok:
            log.warning("provider batch chunk %d is no longer this worker's", chunk.id)
            self._forget(chunk.id)
            return False
        fields: dict[str, Any] = {
            k: v for k, v in values.items() if k in Chunk.__dataclass_fields__
        }
        self._held[chunk.id] = replace(chunk, **fields)
        return True

    # ------------------------------------------------------------ the steps

    async def _prepare(self, api: BatchAPI, chunk: Chunk) -> bool:
        kill_point("before-upload")
        endpoint = self._endpoint(chunk.endpoint)
        path = self._tmp / f"runner-chunk-{chunk.id}-{os.getpid()}.jsonl"
        try:
            written = await write_input(
                path,
                lambda after: self._step(
                    "reading a provider batch's runs",
                    lambda: chunks.chunk_requests(self.engine, chunk.id, after=after),
                ),
                endpoint.batch_max_bytes,
            )
            if written.left_out:
                ok = await self._step(
                    "leaving runs for the next provider batch",
                    lambda: chunks.put_back(
                        self.engine, chunk, self.owner, written.left_out, self.clock()
                    ),
                )
                if not ok:
                    self._forget(chunk.id)
                    return False
            if not written.lines:  # its runs were all cancelled before it was sent
                return await self._finish(chunk, ProviderBatchState.PREPARING, 0, 0)
            file_id = await api.upload(path)
        finally:
            path.unlink(missing_ok=True)
        kill_point("after-upload")
        self._uploaded.add(chunk.id)
        return await self._moved(
            chunk,
            ProviderBatchState.PREPARING,
            state=ProviderBatchState.UPLOADED.value,
            input_file_id=file_id,
            input_bytes=written.size,
            request_count=written.lines,
            uploaded_at=self.clock(),
        )

    def _metadata(self, chunk: Chunk) -> dict[str, str]:
        return {"runner_round": str(chunk.round_id), "runner_chunk": str(chunk.id)}

    async def _create(self, api: BatchAPI, chunk: Chunk) -> bool:
        assert chunk.input_file_id is not None
        # A worker may have died after creating it, before recording its id (not this
        # worker, which uploaded the file just now: then there is nothing to look for).
        found = None
        if chunk.id not in self._uploaded:
            since = (
                chunk.uploaded_at.timestamp() - FIND_SLACK_SECONDS if chunk.uploaded_at else None
            )
            found = await api.find(
                {"runner_chunk": str(chunk.id)}, chunk.input_file_id, since=since
            )
        if found is None:
            try:
                found = await api.create(chunk.input_file_id, self._metadata(chunk))
            except EndpointError as exc:
                # A timeout or a lost connection may hide a batch that was created: the
                # next try looks for it first.
                self._uploaded.discard(chunk.id)
                if exc.status != 404:
                    raise
                # The provider lost the file (the built-in model's, with the process
                # that held it): no batch can use it, so upload the input again.
                log.warning(
                    "provider batch chunk %d: %s: uploading it again", chunk.id, exc.message
                )
                return await self._moved(
                    chunk,
                    ProviderBatchState.UPLOADED,
                    state=ProviderBatchState.PREPARING.value,
                    input_file_id=None,
                )
            kill_point("after-create")
        else:
            log.info("provider batch chunk %d: found %s, created before", chunk.id, found.id)
        self._wait[chunk.id] = FIRST_POLL_SECONDS
        self._due[chunk.id] = anyio.current_time() + FIRST_POLL_SECONDS
        moved = await self._moved(
            chunk,
            ProviderBatchState.UPLOADED,
            state=ProviderBatchState.SUBMITTED.value,
            provider_batch_id=found.id,
            provider_state=found.status,
            submitted_at=self.clock(),
        )
        return moved and found.ended

    async def _poll(self, api: BatchAPI, chunk: Chunk) -> bool:
        assert chunk.provider_batch_id is not None
        if anyio.current_time() < self._due.get(chunk.id, 0):
            return False
        found = await api.retrieve(chunk.provider_batch_id)
        if not found.ended and found.status != "cancelling":
            held = await self._step(
                "counting a provider batch's runs",
                lambda: chunks.held_count(self.engine, chunk.id),
            )
            if held == 0:  # `runner cancel`: nothing of it would be stored
                log.info(
                    "provider batch chunk %d: its runs were cancelled: cancelling %s",
                    chunk.id,
                    found.id,
                )
                found = await api.cancel(found.id)
        values = self._status_values(found)
        if found.ended:
            return await self._moved(
                chunk,
                ProviderBatchState.SUBMITTED,
                state=ProviderBatchState.STORING.value,
                ended_at=self.clock(),
                **values,
            )
        wait = self._wait.get(chunk.id, FIRST_POLL_SECONDS)
        self._wait[chunk.id] = min(wait * POLL_GROWTH, self.config.batch_poll_seconds)
        self._due[chunk.id] = anyio.current_time() + wait
        await self._moved(chunk, ProviderBatchState.SUBMITTED, **values)
        return False

    def _status_values(self, found: ProviderBatch) -> dict[str, object]:
        return {
            "provider_state": found.status,
            "completed_count": found.completed,
            "failed_count": found.failed,
            "output_file_id": found.output_file_id,
            "error_file_id": found.error_file_id,
            "errors": found.errors,
            "polled_at": self.clock(),
        }

    async def _store(self, api: BatchAPI, chunk: Chunk) -> None:
        """Every line of its output and error files as an attempt, then what is left."""
        retry_via = self._endpoint(chunk.endpoint).batch_retry
        stored, requeued = await self._results.store(api, chunk, retry_via)
        await self._finish(chunk, ProviderBatchState.STORING, stored, requeued)

    async def _finish(
        self, chunk: Chunk, expect: ProviderBatchState, stored: int, requeued: int
    ) -> bool:
        await self._moved(
            chunk,
            expect,
            state=ProviderBatchState.DONE.value,
            stored_count=stored,
            requeued_count=requeued,
            finished_at=self.clock(),
            lease_owner=None,
            lease_expires_at=None,
        )
        log.info(
            "provider batch chunk %d (round %d): %d lines stored, %d runs queued again",
            chunk.id,
            chunk.round_id,
            stored,
            requeued,
        )
        self._forget(chunk.id)
        return False

    async def _give_up(self, chunk: Chunk, exc: EndpointError) -> None:
        """The provider refused the chunk for good (upload or create): its runs fail
        with that error, as a synchronous request refused so would."""
        log.error(
            "provider batch chunk %d (%s): %s: %s",
            chunk.id,
            chunk.endpoint,
            exc.error_type,
            exc.message,
        )
        await self._results.fail_all(chunk, exc, self.clock())
        await self._finish(chunk, ProviderBatchState(chunk.state), 0, 0)
