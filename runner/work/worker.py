"""The worker: an anyio task group that claims runs, executes them and stores results.

Tasks inside one worker:

* the claim loop (in ``run``): leases runs as request slots free up;
* one task per request slot: takes claimed runs one after another and makes one try of
  each (``runner.work.tries``);
* the writer: stores outcomes in batches, one transaction per batch (``runner.work.writer``);
* the heartbeat: renews leases, notices runs whose lease was lost, and renews this
  worker's registration (the live-worker count sets each worker's share of the
  endpoints' rate limits);
* on SQLite, the checkpointer: copies the WAL into the database every second from
  aiosqlite's thread (claims and stores run inline, see ``InlineSQLite``, and never do);
* the scheduler (``runner.scheduling.schedule``) on a general worker: schedule ticks, drift reports;
* the signal watcher (CLI only): first SIGINT/SIGTERM stops gracefully, second at once.

Every database step goes through one ``Outage``: when the database goes away (a restart,
a failover, a lost connection, a lock held too long) the loops wait for it and carry on,
requests in flight finish, and their outcomes wait in the writer, up to
``worker.database_outage_seconds``. A failing side task (heartbeat, writer) cancels the
whole group: the worker stops loudly instead of running on as a zombie. Whatever way it
stops, runs it still holds and did not finish are released back to ``queued``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import Settings
from runner.db import queue
from runner.db.engine import InlineSQLite, checkpoint, is_sqlite, reason
from runner.db.outage import Outage, is_outage
from runner.db.queue import ClaimedRun, QueueEngine
from runner.db.types import utcnow
from runner.logs import run_context
from runner.ratelimit import Limits
from runner.scheduling.schedule import run_pass, scheduler_loop
from runner.work.stats import WorkerStats
from runner.work.tries import Tries
from runner.work.waiting import stranded_text, wait_limit, waiting_text
from runner.work.writer import Writer

if TYPE_CHECKING:
    # The openai SDK (a second or more to import): loaded in a thread while the worker
    # sets up and claims its first runs (Worker._load_endpoints).
    from runner.endpoints.client import EndpointPool

T = TypeVar("T")
log = logging.getLogger("runner.worker")

REGISTRY_SECONDS = 5.0  # at most this long before a worker notices others join or leave
TAKE_BACK_SECONDS = 1.0  # claims look for expired leases at most this often while busy
CHECKPOINT_SECONDS = 1.0  # SQLite: how often the worker checkpoints the WAL (see InlineSQLite)
# At a stop, side loops finish the step they are in; one still busy after this is cancelled.
# Longer than SQLite's busy timeout (60 s): a step waiting for the lock ends by itself.
SIDE_LOOPS_STOP_SECONDS = 90.0
LAST_WRITE_SECONDS = 10.0  # at the very end, how long releasing and unregistering may take
CLOCK_WARN_OFF = timedelta(seconds=2)  # a machine clock this far off the database's is logged


_Ready = tuple[ClaimedRun, anyio.CancelScope]  # a claimed run, and the scope that can abandon it


def worker_id() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        concurrency: int | None = None,
        burst: bool = False,
        round_ids: Sequence[int] | None = None,
        handle_signals: bool = False,
        clock: Callable[[], datetime] = utcnow,
        scheduler: bool | None = None,
        machine_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.config = settings.worker
        self.concurrency = concurrency or self.config.concurrency
        self.burst = burst
        self.round_ids = round_ids
        self.handle_signals = handle_signals
        # Leases and timestamps are on the database's clock (PostgreSQL: workers on many
        # machines), so ``clock`` (this machine's, or one ``--now`` shifted) is corrected by
        # how far ``machine_clock`` is from the database's, measured at every registry
        # heartbeat. SQLite is on this machine: its clock is the machine's.
        self._base_clock = clock
        self._machine_clock = machine_clock
        self._clock_offset = timedelta(0)
        # The schedule side task (runner/scheduling/schedule.py). None: on for a general worker,
        # off for one that works only the rounds it was given (runner run, replay --work).
        self.scheduler = round_ids is None if scheduler is None else scheduler
        self.id = worker_id()
        self.stats = WorkerStats()
        self._lease = timedelta(seconds=self.config.lease_seconds)
        # Runs this worker holds a lease on: executing, or claimed ahead and waiting for a slot.
        self._in_flight: dict[int, _Ready] = {}
        self._executing = 0
        self.rounds_seen: set[int] = set()  # rounds this worker has claimed runs of
        self.waiting: str | None = None  # burst: what it waits for while it can claim nothing
        self._last_take_back = -1e9
        self._stopping = False
        self._wakeup = anyio.Event()
        self._idle = anyio.Event()
        # The last claim came back short: the queue had nothing more to give just then.
        self._queue_short = False
        self._loops_stop = anyio.Event()  # heartbeat and scheduler: finish the step, then end
        self._jobs_scope: anyio.CancelScope | None = None
        self.limits = Limits(settings.endpoints)
        self.tries = Tries(self.config, self.limits, self.stats, self.clock)
        self.outage = Outage(self.config.database_outage_seconds)
        # Claims and stores, the statements of every run: on SQLite, inline on this thread.
        self._hot: QueueEngine = engine
        self._writer: Writer | None = None
        self._pool: EndpointPool | None = None
        self._pool_ready = anyio.Event()

    def clock(self) -> datetime:
        """Now, on the database's clock (plus a ``--now`` shift)."""
        return self._base_clock() + self._clock_offset

    async def _measure_clock(self) -> None:
        """How far this machine's clock is from the database's (PostgreSQL only)."""
        if is_sqlite(self.engine):
            return
        before = self._machine_clock()
        database = await queue.database_now(self.engine)
        after = self._machine_clock()
        offset = database - (before + (after - before) / 2)
        if abs(offset - self._clock_offset) > CLOCK_WARN_OFF and abs(offset) > CLOCK_WARN_OFF:
            log.warning(
                "worker %s: this machine's clock is %+.1f s off the database's; leases and "
                "timestamps use the database's",
                self.id,
                -offset.total_seconds(),
            )
        self._clock_offset = offset

    # ------------------------------------------------------------ live numbers

    @property
    def executing(self) -> int:
        """Requests in flight right now."""
        return self._executing

    @property
    def rate_limited(self) -> int:
        """429s seen so far, over every endpoint."""
        return sum(limiter.rate_limited for limiter in self.limits.all())

    @property
    def database_down(self) -> bool:
        """The database is unreachable just now (the worker waits for it)."""
        return self.outage.down

    # ------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Stop claiming; in-flight requests get the grace period to finish."""
        if not self._stopping:
            log.info(
                "worker %s stopping: no new claims, %d in flight", self.id, len(self._in_flight)
            )
        self._stopping = True
        self._wake()

    def _force_stop(self) -> None:
        log.warning("worker %s stopping now: releasing %d runs", self.id, len(self._in_flight))
        self._stopping = True
        if self._jobs_scope is not None:
            self._jobs_scope.cancel()
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = anyio.Event()

    async def _db(self, step: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A database step, each try of it shielded (a transaction cancelled midway can
        leave a SQLite connection holding the lock), tried again through an outage."""

        async def shielded() -> T:
            with anyio.CancelScope(shield=True):
                result = await fn()
            return result

        return await self.outage.call(step, shielded)

    # ------------------------------------------------------------ main loop

    async def run(self) -> WorkerStats:
        inline = None
        if is_sqlite(self.engine):
            inline = InlineSQLite.of(self.engine, busy_timeout_s=self.config.sqlite_busy_seconds)
            self._hot = inline
        writer = self._writer = Writer(
            self._hot,
            self.id,
            self.stats,
            self.outage,
            concurrency=self.concurrency,
            busy=lambda: bool(self._in_flight),
        )
        registered = False
        try:
            # Signals are watched in a scope that is cancelled at the end; the loops that
            # use the database are asked to stop instead, and finish the step they are in:
            # cancelling a query midway makes SQLAlchemy terminate its connection, and
            # aiosqlite can leave that close waiting forever at event loop shutdown.
            async with anyio.create_task_group() as signals:
                if self.handle_signals:
                    # Before registering: a registered worker stops gracefully on SIGTERM.
                    await signals.start(self._watch_signals)
                signals.start_soon(self._load_endpoints)
                await self._db("reading the database's clock", self._measure_clock)
                # Batches of submits that died midway: nobody else deletes them.
                await self._db(
                    "discarding stale batches",
                    lambda: queue.discard_stale_batches(self.engine, self.clock()),
                )
                await self._db(
                    "registering",
                    lambda: queue.register_worker(
                        self.engine,
                        self.id,
                        hostname=socket.gethostname(),
                        pid=os.getpid(),
                        concurrency=self.concurrency,
                        now=self.clock(),
                    ),
                )
                registered = True
                async with anyio.create_task_group() as loops:
                    loops.start_soon(writer.run)
                    loops.start_soon(self._heartbeat_loop)
                    if inline is not None:
                        loops.start_soon(self._checkpoint_loop)
                    if self.scheduler:
                        # Started once the due ticks' rounds are queued (burst: to run them).
                        await loops.start(
                            scheduler_loop,
                            self.engine,
                            self.settings,
                            self.clock,
                            self.id,
                            self._loops_stop,
                            self.outage,
                        )
                    try:
                        await self._claim_and_execute()
                    finally:
                        writer.close()
                        await self._release_unfinished()
                    # The writer stores what is left, then ends with the closed stream;
                    # the other loops end after the step they are in. The deadline is for
                    # a step that hangs: one cancelled midway on SQLite can leave its
                    # connection holding the write lock, so the grace period (which may
                    # be 0) is no bound here.
                    self._loops_stop.set()
                    loops.cancel_scope.deadline = anyio.current_time() + max(
                        self.config.grace_seconds, SIDE_LOOPS_STOP_SECONDS
                    )
                signals.cancel_scope.cancel()
            if self.scheduler and self.burst and not self._stopping:
                # The side task may have ended before the last rounds finished: their drift
                # reports (and on-drift commands) before a burst worker exits.
                await run_pass(
                    self.engine, self.settings, self.clock, self.id, ticks=False, outage=self.outage
                )
        finally:
            with anyio.CancelScope(shield=True):
                if self._pool is not None:
                    await self._pool.aclose()
                if registered:
                    await self._last_write(
                        "unregistering", lambda: queue.unregister_worker(self.engine, self.id)
                    )
            if inline is not None:
                inline.dispose()
            self.stats.rate_limited = self.rate_limited
            self.stats.database_outages = self.outage.outages
        return self.stats

    async def _last_write(self, step: str, fn: Callable[[], Awaitable[object]]) -> bool:
        """A write on the way out: once, briefly; the database may be the reason we stop."""
        try:
            with anyio.fail_after(LAST_WRITE_SECONDS):
                await fn()
        except Exception as exc:
            if not (is_outage(exc) or isinstance(exc, TimeoutError)):
                raise
            log.warning("worker %s: %s failed (%s)", self.id, step, reason(exc))
            return False
        return True

    async def _load_endpoints(self) -> None:
        """Import the endpoint clients in a thread, while the event loop checks the database,
        registers and claims the first runs: importing the openai SDK is most of a worker's
        start-up (request slots wait for it)."""
        pool_class = await anyio.to_thread.run_sync(_endpoint_pool_class)
        self._pool = pool_class(self.settings.endpoints)
        self._pool_ready.set()

    async def _claim_and_execute(self) -> None:
        # Claimed runs wait in ``ready`` for one of ``concurrency`` slot tasks: a task per
        # slot, not per run (spawning one costs more than the rest of a run's bookkeeping).
        ready_send, ready = anyio.create_memory_object_stream[_Ready](math.inf)
        with ready, ready_send:
            await self._run_slots(ready_send, ready)

    async def _run_slots(
        self, ready_send: MemoryObjectSendStream[_Ready], ready: MemoryObjectReceiveStream[_Ready]
    ) -> None:
        async with anyio.create_task_group() as jobs:
            self._jobs_scope = jobs.cancel_scope
            for _ in range(self.concurrency):
                jobs.start_soon(self._slot, ready)
            await self._claim_loop(ready_send)
            # Runs claimed ahead never start once stopping; requests in progress get the grace.
            with anyio.move_on_after(self.config.grace_seconds):
                while self._executing:
                    self._idle = anyio.Event()
                    await self._idle.wait()
            jobs.cancel_scope.cancel()

    def _claim_wanted(self) -> int:
        """How many runs to claim now: 0 until two concurrencies' worth have finished.

        A claim is a write transaction, so claim ahead in batches: hold up to four times
        the concurrency and claim again once two concurrencies' worth have finished. When
        a claim starts, every slot is busy and up to a concurrency's worth more wait for
        one, which covers the claim's few milliseconds; and one claim serves two
        concurrencies' worth of runs, which spreads its fixed cost.
        """
        want = 4 * self.concurrency - len(self._in_flight)
        return want if want >= 2 * self.concurrency else 0

    async def _claim_loop(self, ready: MemoryObjectSendStream[_Ready]) -> None:
        while not self._stopping:
            want = self._claim_wanted()
            if not want:
                await self._sleep(self.config.poll_seconds)
                continue
            take_back = time.monotonic() - self._last_take_back >= TAKE_BACK_SECONDS
            claimed = await self._db(
                "claiming runs", functools.partial(self._claim, want, take_back)
            )
            if take_back:
                self._last_take_back = time.monotonic()
            if claimed:
                self.waiting = None
            for run in claimed:
                entry = (run, anyio.CancelScope())
                self._in_flight[run.run_id] = entry
                self.rounds_seen.add(run.round_id)
                ready.send_nowait(entry)
            self._queue_short = len(claimed) < want
            if self._queue_short:
                # Short: look for expired leases on the next claim, not a second from now.
                self._last_take_back = -1e9
                if self.burst and await self._drained():
                    log.info("worker %s: %s", self.id, self.stats.stranded or "nothing left to run")
                    return
                await self._sleep(self.config.poll_seconds)

    async def _claim(self, want: int, take_back: bool) -> list[ClaimedRun]:
        return await queue.claim(
            self._hot,
            self.id,
            want,
            lease=self._lease,
            now=self.clock(),
            round_ids=self.round_ids,
            exclude_endpoints=list(self.stats.disabled_endpoints),
            take_back=take_back,
        )

    async def _drained(self) -> bool:
        if self._in_flight:
            return False
        # Finished runs count as unfinished until stored: wait for the writer (a retry
        # stored now puts its run back in the queue, so it is not counted as done).
        assert self._writer is not None
        while self._writer.unstored > 0:
            await self._writer.wait_stored(self.config.poll_seconds)
        now = self.clock()
        left = await self._db(
            "counting what is left",
            lambda: queue.unfinished(
                self.engine, self.round_ids, list(self.stats.disabled_endpoints), now
            ),
        )
        waiting = waiting_text(left)
        if waiting and waiting != self.waiting:
            log.info("worker %s: %s", self.id, waiting)
        self.waiting = waiting
        self.stats.stranded = stranded_text(left, now, wait_limit(self.config))
        return left.count == 0 or self.stats.stranded is not None

    async def _sleep(self, seconds: float) -> None:
        wakeup = self._wakeup
        with anyio.move_on_after(seconds):
            await wakeup.wait()

    async def _release_unfinished(self) -> None:
        with anyio.CancelScope(shield=True):
            ids = list(self._in_flight)
            self._in_flight.clear()
            if not ids:
                return

            async def release() -> None:
                count = await queue.release(self.engine, self.id, ids, self.clock())
                self.stats.released += count
                log.info("worker %s released %d unfinished runs back to the queue", self.id, count)

            if not await self._last_write("releasing unfinished runs", release):
                log.warning(
                    "worker %s: %d runs stay leased to it until their leases expire, then "
                    "any worker takes them back",
                    self.id,
                    len(ids),
                )

    # ------------------------------------------------------------ one run

    async def _slot(self, ready: MemoryObjectReceiveStream[_Ready]) -> None:
        """One request slot: executes claimed runs one after another."""
        await self._pool_ready.wait()
        assert self._pool is not None
        pool = self._pool
        async for run, scope in ready:
            # Claimed ahead and never started once stopping: released when the worker stops.
            # Gone from _in_flight: abandoned (cancelled, or its lease lost) while it waited.
            if not self._stopping and run.run_id in self._in_flight:
                await self._execute(run, scope, pool)

    async def _execute(self, run: ClaimedRun, scope: anyio.CancelScope, pool: EndpointPool) -> None:
        assert self._writer is not None
        with scope:
            self._executing += 1
            try:
                outcome = await self.tries.attempt(run, pool, self._writer.sent)
                if outcome is None:  # its endpoint was given up on while it waited
                    self.stats.released += await self._db(
                        "releasing a run",
                        lambda: queue.release(self.engine, self.id, [run.run_id], self.clock()),
                    )
                else:  # the writer's buffer has room for a few batches: no wait
                    await self._writer.put(outcome)
            finally:
                self._executing -= 1
        # Done, or our own scope was cancelled because the lease was lost (heartbeat):
        # either way the run is no longer ours to release. A stop cancels the task group
        # instead, which propagates past this point and leaves the run to be released.
        self._in_flight.pop(run.run_id, None)
        if not self._executing:
            self._idle.set()
        # Claim again when there is room; once the queue came back short, a claim per
        # finished run would find nothing: wait for the poll, or (burst) the last run.
        if self._claim_wanted() and (not self._queue_short or not self._in_flight):
            self._wake()

    # ------------------------------------------------------------ side tasks

    async def _heartbeat_loop(self) -> None:
        interval = min(self.config.heartbeat_seconds, REGISTRY_SECONDS)
        alive_within = timedelta(seconds=3 * interval)
        last_lease_renewal = time.monotonic()
        while not await self._paused_until_stop(interval):
            await self._db("reading the database's clock", self._measure_clock)
            live = await self._db(
                "renewing the worker's registration",
                lambda: queue.worker_heartbeat(
                    self.engine, self.id, now=self.clock(), alive_within=alive_within
                ),
            )
            self.limits.set_share(1 / live)
            if time.monotonic() - last_lease_renewal < self.config.heartbeat_seconds * 0.99:
                continue
            last_lease_renewal = time.monotonic()
            await self._renew_leases()

    async def _renew_leases(self) -> None:
        # Judge only runs held before the query: a claim committing meanwhile adds runs
        # this heartbeat could not have seen (abandoning them would strand them).
        before = list(self._in_flight)
        held = await self._db(
            "renewing leases",
            lambda: queue.heartbeat(
                self.engine, self.id, before, lease=self._lease, now=self.clock()
            ),
        )
        for run_id in before:
            if run_id not in held and run_id in self._in_flight:
                run, scope = self._in_flight[run_id]
                # Its lease passed to another worker, or a user cancelled it.
                log.warning(
                    "run %d (batch %d round %d key %s): no longer ours (cancelled, or its "
                    "lease expired), abandoning it",
                    run_id,
                    run.batch_id,
                    run.round_number,
                    run.key,
                    extra=run_context(run),
                )
                self.stats.abandoned += 1
                # Not ours to store or release any more; a slot skips it if it has not
                # started, and a request in progress is cancelled.
                del self._in_flight[run_id]
                scope.cancel()

    async def _checkpoint_loop(self) -> None:
        """SQLite: the inline connection never checkpoints (it would block the loop)."""
        while not await self._paused_until_stop(CHECKPOINT_SECONDS):
            await self._db("checkpointing", lambda: checkpoint(self.engine))

    async def _paused_until_stop(self, seconds: float) -> bool:
        """Wait ``seconds``, less if the side loops are asked to stop; True once they are."""
        with anyio.move_on_after(seconds):
            await self._loops_stop.wait()
        return self._loops_stop.is_set()

    async def _watch_signals(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self._stopping:
                    log.warning(
                        "%s: finishing in-flight requests (up to %g s); "
                        "send it again to stop at once",
                        name,
                        self.config.grace_seconds,
                    )
                    self.request_stop()
                else:
                    self._force_stop()


def _endpoint_pool_class() -> type[EndpointPool]:
    from runner.endpoints.client import EndpointPool

    return EndpointPool
