"""The writer: a worker's outcomes stored in batches, one transaction per batch.

Request slots hand outcomes over without waiting for the database (the buffer holds a
few batches); the writer gathers those that arrive within a few tens of milliseconds of
each other and stores them together (``queue.record``, fenced: a run no longer this
worker's gets its attempt logged as ``discarded``). Through a database outage it holds
on to them and tries again (``Outage``), so responses already paid for are not lost;
a batch stored again after a lost connection keeps nothing twice.

It also writes which runs' requests went out (``runs.sent_attempt``), with the next
batch or within ``WRITE_GATHER_SECONDS`` of the send: a worker killed after claiming
runs ahead of its request slots leaves those it never sent with the try uncounted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from runner.db import queue
from runner.db.outage import Outage
from runner.db.queue import Outcome, QueueEngine
from runner.work.stats import WorkerStats

log = logging.getLogger("runner.worker")

WRITE_BATCH = 500
WRITE_ITEMS = 2 * WRITE_BATCH  # a batch's outcomes, and the notes of requests sent
WRITE_GATHER_SECONDS = 0.05  # the writer waits this long to store results in one transaction


@dataclass(frozen=True)
class Sent:
    """A request slot is sending the run's request: its try counts."""

    run_id: int


class Writer:
    def __init__(
        self,
        hot: QueueEngine,
        owner: str,
        stats: WorkerStats,
        outage: Outage,
        *,
        concurrency: int,
        busy: Callable[[], bool],
    ) -> None:
        self.hot = hot
        self.owner = owner
        self.stats = stats
        self.outage = outage
        self._busy = busy  # whether runs are still in flight (more results coming soon)
        # Room for a few write batches: request slots never wait for the database.
        self._send, self._receive = anyio.create_memory_object_stream[Outcome | Sent](
            8 * concurrency + WRITE_BATCH
        )
        # Outcomes handed over and not yet stored, and an event for when none are.
        self.unstored = 0
        self._stored = anyio.Event()

    async def put(self, outcome: Outcome) -> None:
        """Hand an outcome over; waits only when the writer is a few batches behind."""
        # Counted before the send: the writer may store it before we resume.
        self.unstored += 1
        try:
            self._send.send_nowait(outcome)
        except anyio.WouldBlock:
            try:
                await self._send.send(outcome)
            except BaseException:  # cancelled: it never reached the writer
                self.unstored -= 1
                raise

    async def sent(self, run_id: int) -> None:
        """Note that the run's request is going out (written with the next batch)."""
        try:
            self._send.send_nowait(Sent(run_id))
        except anyio.WouldBlock:
            await self._send.send(Sent(run_id))

    def close(self) -> None:
        """No more outcomes: ``run`` stores what it has, then returns."""
        self._send.close()

    async def wait_stored(self, seconds: float) -> None:
        """Until every outcome handed over is stored, or ``seconds`` at most."""
        if self.unstored > 0:
            self._stored = anyio.Event()
            with anyio.move_on_after(seconds):
                await self._stored.wait()

    async def run(self) -> None:
        async with self._receive:
            async for first in self._receive:
                items = await self._gather(first, self._receive)
                batch = [o for o in items if isinstance(o, Outcome)]
                sent = [s.run_id for s in items if isinstance(s, Sent)]
                discarded = await self._store(batch, sent)
                self.unstored -= len(batch)
                if not self.unstored:
                    self._stored.set()
                if discarded:
                    for outcome in discarded:
                        self.stats.discarded(outcome)
                    log.warning(
                        "worker %s: %d results were not stored: their runs were cancelled "
                        "or had passed to another worker (attempts recorded as discarded)",
                        self.owner,
                        len(discarded),
                    )

    async def _store(self, batch: list[Outcome], sent: list[int]) -> list[Outcome]:
        tries = 0

        async def record() -> list[Outcome]:
            nonlocal tries
            tries += 1
            # Shielded: a transaction cancelled midway can leave a SQLite connection
            # holding the lock. A stop can still cancel the waits between tries.
            with anyio.CancelScope(shield=True):
                discarded = await queue.record(
                    self.hot, self.owner, batch, sent=sent, again=tries > 1
                )
            return discarded

        return await self.outage.call("storing results", record)

    async def _gather(
        self, first: Outcome | Sent, receive: MemoryObjectReceiveStream[Outcome | Sent]
    ) -> list[Outcome | Sent]:
        """Results arriving within a few tens of ms of each other go into one transaction
        (no wait when nothing is in flight: no more results are coming soon)."""
        if self._busy() and receive.statistics().current_buffer_used < WRITE_ITEMS:
            await anyio.sleep(WRITE_GATHER_SECONDS)
        batch: list[Outcome | Sent] = [first]
        while len(batch) < WRITE_ITEMS:
            try:
                batch.append(receive.receive_nowait())
            except (anyio.EndOfStream, anyio.WouldBlock):
                break
        return batch
