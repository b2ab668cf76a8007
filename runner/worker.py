"""The worker: an anyio task group that claims runs, executes them and stores results.

Tasks inside one worker:

* the claim loop (in ``run``): leases runs as request slots free up;
* one task per request slot: takes claimed runs one after another, calls the endpoint,
  decides success / retry / failure;
* the writer: stores outcomes in batches, one transaction per batch;
* the heartbeat: renews leases, notices runs whose lease was lost, and renews this
  worker's registration (the live-worker count sets each worker's share of the
  endpoints' rate limits);
* on SQLite, the checkpointer: copies the WAL into the database every second from
  aiosqlite's thread (claims and stores run inline, see ``InlineSQLite``, and never do);
* the signal watcher (CLI only): first SIGINT/SIGTERM stops gracefully, second at once.

A failing side task (heartbeat, writer) cancels the whole group: the worker stops
loudly instead of running on as a zombie. Whatever way it stops, runs it still
holds and did not finish are released back to ``queued``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import Settings, WorkerConfig
from runner.db import queue
from runner.db.engine import InlineSQLite, checkpoint, is_sqlite
from runner.db.queue import ClaimedRun, Outcome, QueueEngine
from runner.db.types import utcnow
from runner.endpoints import EndpointError
from runner.endpoints.client import EndpointPool
from runner.logs import run_context
from runner.ratelimit import Limits, estimate_tokens
from runner.schedule import run_pass, scheduler_loop
from runner.waiting import stranded_text, wait_limit, waiting_text

log = logging.getLogger("runner.worker")

WRITE_BATCH = 500
AUTH_FAILURES_TO_GIVE_UP = 3  # 401s in a row before a worker stops claiming for an endpoint
REGISTRY_SECONDS = 5.0  # at most this long before a worker notices others join or leave
TAKE_BACK_SECONDS = 1.0  # claims look for expired leases at most this often while busy
CHECKPOINT_SECONDS = 1.0  # SQLite: how often the worker checkpoints the WAL (see InlineSQLite)
WRITE_GATHER_SECONDS = 0.05  # the writer waits this long to store results in one transaction
# At a stop, side loops finish the step they are in; one still busy after this is cancelled.
# Longer than SQLite's busy timeout (60 s): a step waiting for the lock ends by itself.
SIDE_LOOPS_STOP_SECONDS = 90.0


_Ready = tuple[ClaimedRun, anyio.CancelScope]  # a claimed run, and the scope that can abandon it


def worker_id() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


def backoff_seconds(attempt: int, config: WorkerConfig, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, capped, never shorter than the server asked."""
    ceiling = min(config.backoff_max_seconds, config.backoff_base_seconds * 2 ** (attempt - 1))
    delay = random.uniform(0, ceiling)
    return max(delay, retry_after or 0.0)


@dataclass
class WorkerStats:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    fenced_out: int = 0
    rate_limited: int = 0
    abandoned: int = 0  # runs cancelled by a user or taken over while this worker held them
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # endpoint -> why this worker stopped claiming its runs
    disabled_endpoints: dict[str, str] = field(default_factory=dict)
    # burst: why it exited with runs left (queued for later than it waits, runner.waiting)
    stranded: str | None = None


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
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.config = settings.worker
        self.concurrency = concurrency or self.config.concurrency
        self.burst = burst
        self.round_ids = round_ids
        self.handle_signals = handle_signals
        self.clock = clock
        # The schedule side task (runner/schedule.py). None: on for a general worker,
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
        # Outcomes handed to the writer and not yet stored, and an event for when none are.
        self._unstored = 0
        self._stored = anyio.Event()
        self._loops_stop = anyio.Event()  # heartbeat and scheduler: finish the step, then end
        self._jobs_scope: anyio.CancelScope | None = None
        self.limits = Limits(settings.endpoints)
        self._auth_failures: dict[str, int] = {}
        # Claims and stores, the statements of every run: on SQLite, inline on this thread.
        self._hot: QueueEngine = engine

    # ------------------------------------------------------------ live numbers

    @property
    def executing(self) -> int:
        """Requests in flight right now."""
        return self._executing

    @property
    def rate_limited(self) -> int:
        """429s seen so far, over every endpoint."""
        return sum(limiter.rate_limited for limiter in self.limits.all())

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

    # ------------------------------------------------------------ main loop

    async def run(self) -> WorkerStats:
        # Room for a few write batches: request tasks never wait for the database.
        send, receive = anyio.create_memory_object_stream[Outcome](
            4 * self.concurrency + WRITE_BATCH
        )
        pool = EndpointPool(self.settings.endpoints)
        inline = None
        if is_sqlite(self.engine):
            inline = InlineSQLite.of(self.engine)
            self._hot = inline
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
                # Batches of submits that died midway: nobody else deletes them.
                await queue.discard_stale_batches(self.engine, utcnow())
                await queue.register_worker(
                    self.engine,
                    self.id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    concurrency=self.concurrency,
                    now=self.clock(),
                )
                registered = True
                async with anyio.create_task_group() as loops:
                    loops.start_soon(self._write_loop, receive)
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
                        )
                    async with send:
                        try:
                            await self._claim_and_execute(send, pool)
                        finally:
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
                await run_pass(self.engine, self.settings, self.clock, self.id, ticks=False)
        finally:
            with anyio.CancelScope(shield=True):
                await pool.aclose()
                if registered:
                    await queue.unregister_worker(self.engine, self.id)
            if inline is not None:
                inline.dispose()
        self.stats.rate_limited = self.rate_limited
        return self.stats

    async def _claim_and_execute(
        self, send: MemoryObjectSendStream[Outcome], pool: EndpointPool
    ) -> None:
        # Claimed runs wait in ``ready`` for one of ``concurrency`` slot tasks: a task per
        # slot, not per run (spawning one costs more than the rest of a run's bookkeeping).
        ready_send, ready = anyio.create_memory_object_stream[_Ready](math.inf)
        with ready, ready_send:
            await self._run_slots(ready_send, ready, send, pool)

    async def _run_slots(
        self,
        ready_send: MemoryObjectSendStream[_Ready],
        ready: MemoryObjectReceiveStream[_Ready],
        send: MemoryObjectSendStream[Outcome],
        pool: EndpointPool,
    ) -> None:
        async with anyio.create_task_group() as jobs:
            self._jobs_scope = jobs.cancel_scope
            for _ in range(self.concurrency):
                jobs.start_soon(self._slot, ready, send, pool)
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
            claimed = await queue.claim(
                self._hot,
                self.id,
                want,
                lease=self._lease,
                now=self.clock(),
                round_ids=self.round_ids,
                exclude_endpoints=list(self.stats.disabled_endpoints),
                take_back=take_back,
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

    async def _drained(self) -> bool:
        if self._in_flight:
            return False
        # Finished runs count as unfinished until stored: wait for the writer (a retry
        # stored now puts its run back in the queue, so it is not counted as done).
        while self._unstored > 0:
            self._stored = anyio.Event()
            with anyio.move_on_after(self.config.poll_seconds):
                await self._stored.wait()
        now = self.clock()
        # Shielded: a second signal cancels this task, and a SQLite transaction cancelled
        # midway can leave its connection holding the write lock (see ``run``).
        with anyio.CancelScope(shield=True):
            left = await queue.unfinished(
                self.engine, self.round_ids, list(self.stats.disabled_endpoints), now
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
            if ids:
                count = await queue.release(self.engine, self.id, ids, self.clock())
                self.stats.released += count
                log.info("worker %s released %d unfinished runs back to the queue", self.id, count)
            self._in_flight.clear()

    # ------------------------------------------------------------ one run

    async def _slot(
        self,
        ready: MemoryObjectReceiveStream[_Ready],
        send: MemoryObjectSendStream[Outcome],
        pool: EndpointPool,
    ) -> None:
        """One request slot: executes claimed runs one after another."""
        async for run, scope in ready:
            # Claimed ahead and never started once stopping: released when the worker stops.
            # Gone from _in_flight: abandoned (cancelled, or its lease lost) while it waited.
            if not self._stopping and run.run_id in self._in_flight:
                await self._execute(run, scope, send, pool)

    async def _execute(
        self,
        run: ClaimedRun,
        scope: anyio.CancelScope,
        send: MemoryObjectSendStream[Outcome],
        pool: EndpointPool,
    ) -> None:
        with scope:
            self._executing += 1
            try:
                outcome = await self._attempt(run, pool)
                if outcome is None:  # its endpoint was given up on while it waited
                    with anyio.CancelScope(shield=True):
                        self.stats.released += await queue.release(
                            self.engine, self.id, [run.run_id], self.clock()
                        )
                else:
                    # Counted before the send: the writer may store it before we resume.
                    self._unstored += 1
                    try:  # the writer's buffer has room for a few batches: no wait
                        send.send_nowait(outcome)
                    except anyio.WouldBlock:
                        try:
                            await send.send(outcome)
                        except BaseException:  # cancelled: it never reached the writer
                            self._unstored -= 1
                            raise
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

    async def _attempt(self, run: ClaimedRun, pool: EndpointPool) -> Outcome | None:
        """One try of a run under its endpoint's limits; None if the endpoint was given up."""
        limiter = self.limits.get(run.endpoint, run.model)
        client = pool.get(run.endpoint)
        # Counting prompt tokens costs more than the rest of a claim: only under a TPM limit.
        metered = limiter.bucket("tokens") is not None
        estimate = estimate_tokens(json.loads(run.body)) if metered else 0
        async with limiter.permit(estimate) as permit:
            if run.endpoint in self.stats.disabled_endpoints:
                return None
            started_at = self.clock()
            t0 = time.perf_counter()
            try:
                completion = await client.chat(run.body)
            except EndpointError as exc:
                permit.settle(None, exc.rate_limits)
                if exc.status == 429 and exc.retryable:
                    limiter.pause(self._pause_for(exc))
                self._count_auth_failure(run.endpoint, exc)
                return self._failure(run, started_at, t0, exc)
            permit.settle(completion.total_tokens, completion.rate_limits)
        self._auth_failures.pop(run.endpoint, None)
        latency = (time.perf_counter() - t0) * 1000
        self.stats.succeeded += 1
        self.stats.prompt_tokens += completion.prompt_tokens or 0
        self.stats.completion_tokens += completion.completion_tokens or 0
        return Outcome(
            run_id=run.run_id,
            attempt=run.attempt,
            started_at=started_at,
            finished_at=self.clock(),
            latency_ms=round(latency, 3),
            outcome="succeeded",
            http_status=completion.http_status,
            response=completion.response,
            output=completion.outputs[0],
            outputs=json.dumps(list(completion.outputs), ensure_ascii=False),
            finish_reason=completion.finish_reason,
            response_model=completion.model,
            system_fingerprint=completion.system_fingerprint,
            provider_request_id=completion.request_id,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=completion.total_tokens,
        )

    @staticmethod
    def _pause_for(exc: EndpointError) -> float:
        """How long a 429 pauses its endpoint: what the server asked, else its reset time."""
        if exc.retry_after is not None:
            return exc.retry_after
        info = exc.rate_limits
        resets = [r for r in (info.reset_requests, info.reset_tokens) if r] if info else []
        return min(resets) if resets else 1.0

    def _count_auth_failure(self, endpoint: str, exc: EndpointError) -> None:
        """An invalid key must not burn through a batch: give up after a few 401s in a row."""
        if exc.status != 401:
            self._auth_failures.pop(endpoint, None)
            return
        count = self._auth_failures[endpoint] = self._auth_failures.get(endpoint, 0) + 1
        if count >= AUTH_FAILURES_TO_GIVE_UP and endpoint not in self.stats.disabled_endpoints:
            why = (
                f"{count} requests in a row were refused with HTTP 401 ({exc.message}); "
                "check the endpoint's API key, then run `runner work` again"
            )
            self.stats.disabled_endpoints[endpoint] = why
            log.error("endpoint %s: not claiming its runs any more: %s", endpoint, why)

    def _failure(
        self, run: ClaimedRun, started_at: datetime, t0: float, exc: EndpointError
    ) -> Outcome:
        finished = self.clock()
        if exc.status == 401 and run.endpoint in self.stats.disabled_endpoints:
            # Its endpoint was given up on (a bad key): the run goes back like the rest of
            # its endpoint's runs, however many tries it had left.
            self.stats.released += 1
            return self._error_outcome(run, started_at, t0, exc, "released", finished)
        # A 401 before the endpoint is given up is held against the run like a retryable
        # error: a bad key must not fail the first few runs of a batch.
        retryable = exc.retryable or exc.status == 401
        retry = retryable and run.attempt < run.max_attempts
        retry_at = None
        if retry:
            delay = backoff_seconds(run.attempt, self.config, exc.retry_after)
            retry_at = finished + timedelta(seconds=delay)
            self.stats.retried += 1
        else:
            self.stats.failed += 1
        message = exc.message
        if retryable and not retry:
            message = f"{message} (gave up after {run.attempt} attempts)"
        log.log(
            logging.INFO if retry else logging.WARNING,
            "run %d (batch %d round %d key %s) attempt %d: %s: %s%s",
            run.run_id,
            run.batch_id,
            run.round_number,
            run.key,
            run.attempt,
            exc.error_type,
            exc.message,
            f"; retry in {(retry_at - finished).total_seconds():.1f} s" if retry_at else "",
            extra=run_context(run),
        )
        outcome = "retry" if retry else "failed"
        return self._error_outcome(run, started_at, t0, exc, outcome, finished, retry_at, message)

    @staticmethod
    def _error_outcome(
        run: ClaimedRun,
        started_at: datetime,
        t0: float,
        exc: EndpointError,
        outcome: str,
        finished: datetime,
        retry_at: datetime | None = None,
        message: str | None = None,
    ) -> Outcome:
        return Outcome(
            run_id=run.run_id,
            attempt=run.attempt,
            started_at=started_at,
            finished_at=finished,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
            outcome=outcome,
            http_status=exc.status,
            retry_at=retry_at,
            retry_after_ms=None if exc.retry_after is None else round(exc.retry_after * 1000, 3),
            provider_request_id=exc.request_id,
            error_type=exc.error_type,
            error_message=exc.message if message is None else message,
            error_body=exc.body,
        )

    # ------------------------------------------------------------ side tasks

    async def _write_loop(self, receive: MemoryObjectReceiveStream[Outcome]) -> None:
        async with receive:
            async for first in receive:
                batch = await self._gather(first, receive)
                with anyio.CancelScope(shield=True):
                    discarded = await queue.record(self._hot, self.id, batch)
                self._unstored -= len(batch)
                if not self._unstored:
                    self._stored.set()
                if discarded:
                    self._count_discarded(discarded)

    def _count_discarded(self, discarded: Sequence[Outcome]) -> None:
        """Results the queue refused (the run was no longer ours) are not this worker's."""
        self.stats.fenced_out += len(discarded)
        for o in discarded:
            if o.outcome == "succeeded":
                self.stats.succeeded -= 1
            elif o.outcome == "retry":
                self.stats.retried -= 1
            elif o.outcome == "failed":
                self.stats.failed -= 1
            else:
                self.stats.released -= 1
        log.warning(
            "worker %s: %d results were not stored: their runs were cancelled or had "
            "passed to another worker (attempts recorded as discarded)",
            self.id,
            len(discarded),
        )

    async def _gather(
        self, first: Outcome, receive: MemoryObjectReceiveStream[Outcome]
    ) -> list[Outcome]:
        """Results arriving within a few tens of ms of each other go into one transaction
        (no wait when nothing is in flight: no more results are coming soon)."""
        if self._in_flight and receive.statistics().current_buffer_used < WRITE_BATCH:
            await anyio.sleep(WRITE_GATHER_SECONDS)
        batch = [first]
        while len(batch) < WRITE_BATCH:
            try:
                batch.append(receive.receive_nowait())
            except (anyio.EndOfStream, anyio.WouldBlock):
                break
        return batch

    async def _heartbeat_loop(self) -> None:
        interval = min(self.config.heartbeat_seconds, REGISTRY_SECONDS)
        alive_within = timedelta(seconds=3 * interval)
        last_lease_renewal = time.monotonic()
        while not await self._paused_until_stop(interval):
            live = await queue.worker_heartbeat(
                self.engine, self.id, now=self.clock(), alive_within=alive_within
            )
            self.limits.set_share(1 / live)
            if time.monotonic() - last_lease_renewal < self.config.heartbeat_seconds * 0.99:
                continue
            last_lease_renewal = time.monotonic()
            # Judge only runs held before the query: a claim committing meanwhile adds runs
            # this heartbeat could not have seen (abandoning them would strand them).
            before = list(self._in_flight)
            held = await queue.heartbeat(
                self.engine, self.id, before, lease=self._lease, now=self.clock()
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
            await checkpoint(self.engine)

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
