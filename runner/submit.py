"""Submitting a job file: all of it, or nothing.

Jobs stream from the parser into the database, so a file of a million lines is never
held in memory, and a file that would give more than ``max_jobs`` jobs is refused.
PostgreSQL takes a submit in one transaction (one COPY): workers never wait for it,
as they touch none of its rows. SQLite has one write lock for the whole database, so
a submit there is written in short transactions of ``SUBMIT_CHUNK`` jobs with their
runs, between which workers write: the batch stays *pending* (invisible: not claimed,
not listed) until the last one completes it. The chunks go through one connection that
checkpoints the WAL rarely (``runner.db.engine.bulk_writer``). Any error (parser, duplicate key,
database) leaves nothing: the transaction rolls back, or the pending batch is deleted
(a submit killed midway leaves it to the next submit or worker start, once its
``pending_until`` passed).

A file whose identical submission is already stored (same bytes, batch name and
endpoint) is not queued twice: if that batch's latest round has runs left, ``submit``
returns it (``Submitted.resumed``) for the caller to work; if it finished,
``AlreadySubmittedError`` says so. ``again=True`` queues a new batch regardless.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.config import EndpointConfig, Settings
from runner.db import queue
from runner.db.engine import bulk_writer
from runner.db.models import RoundTrigger, RunState
from runner.db.types import utcnow
from runner.errors import AlreadySubmittedError, ConfigError, JobFileError, ScheduleError
from runner.jobfile import JobFile, find_duplicate, load_job_file
from runner.scheduling.schedule import create_schedule

log = logging.getLogger(__name__)
SUBMIT_CHUNK = 5000  # jobs (and their runs) per transaction of a SQLite submit
# How long a pending batch outlives its last write: the submit is taken for dead after.
PENDING_FOR = timedelta(minutes=10)


@dataclass(frozen=True)
class Submitted:
    batch_id: int
    name: str
    job_count: int
    round_id: int
    round_number: int
    schedule: str | None = None  # the schedule the file's ``schedule:`` created
    # Not queued now: the identical file's batch, whose latest round still has runs left.
    resumed: queue.LastRound | None = None
    # Why no worker here could send its requests: its endpoint's key is not set.
    missing_key: str | None = None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _finished_message(path: Path, name: str, last: queue.LastRound) -> str:
    counts = ", ".join(f"{last.counts[s]} {s}" for s in RunState if last.counts.get(s))
    what = f"{path} already ran as batch {last.batch_id} ({name}): round {last.number} finished"
    again = "or give --again to submit it as a new batch"
    redo = [s for s in ("failed", "cancelled") if last.counts.get(s)]
    if redo:
        retry = f"runner retry {last.batch_id} " + " ".join(f"--{s}" for s in redo)
        return f"{what} ({counts}); `{retry}` queues those again, {again}"
    return f"{what} ({counts}); see `runner status {last.batch_id}`, {again}"


async def _already_submitted(
    engine: AsyncEngine, job_file: JobFile, path: Path
) -> Submitted | None:
    """The identical submission's unfinished batch; raises if it finished; None if none."""
    async with engine.connect() as conn:
        last = await queue.identical_batch(
            conn,
            name=job_file.name,
            source_sha256=_file_sha256(path),
            endpoint=job_file.endpoint,
        )
    if last is None:
        return None
    if not last.left:
        raise AlreadySubmittedError(_finished_message(path, job_file.name, last))
    total = sum(last.counts.values())
    return Submitted(last.batch_id, job_file.name, total, last.round_id, last.number, None, last)


def _row(batch_id: int, job: Any) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "key": job.key,
        "endpoint": job.endpoint,
        "model": job.model,
        "body": job.body,
        "request_hash": job.request_hash,
        "seed": job.seed,
        "source_line": job.line,
        "api": job.api,
    }


async def _with_schedule(
    conn: AsyncConnection, job_file: JobFile, batch_id: int, now: datetime
) -> str | None:
    """The file's ``schedule:``, created for the batch; a taken name is the file's fault."""
    if job_file.schedule is None:
        return None
    try:
        return await create_schedule(conn, job_file.schedule, batch_id, job_file.name, now)
    except ScheduleError as exc:
        raise JobFileError(str(job_file.path), None, "schedule", exc.message) from None


async def _new_batch(conn: AsyncConnection, job_file: JobFile, now: datetime) -> int:
    """The batch row, pending until ``queue.complete_batch``."""
    return await queue.insert_batch(
        conn,
        name=job_file.name,
        source_path=str(job_file.path),
        source_format=job_file.format,
        submitted_at=now,
        pending_until=utcnow() + PENDING_FOR,
    )


async def _insert_at_once(
    engine: AsyncEngine, job_file: JobFile, max_attempts: int, now: datetime
) -> Submitted:
    """PostgreSQL: the whole submit in one transaction."""
    async with bulk_writer(engine) as conn, conn.begin():
        batch_id = await _new_batch(conn, job_file, now)
        # Before the jobs: a taken name fails fast.
        schedule = await _with_schedule(conn, job_file, batch_id, now)
        count = await queue.insert_jobs(conn, (_row(batch_id, job) for job in job_file.jobs()))
        await queue.complete_batch(
            conn, batch_id, job_count=count, source_sha256=job_file.sha256, now=utcnow()
        )
        round_id, number = await queue.create_round(conn, batch_id, RoundTrigger.SUBMIT, now)
        await queue.enqueue_round(conn, round_id, batch_id, max_attempts=max_attempts, now=now)
    return Submitted(batch_id, job_file.name, count, round_id, number, schedule)


async def _insert_in_chunks(
    engine: AsyncEngine, job_file: JobFile, max_attempts: int, now: datetime
) -> Submitted:
    """SQLite: a pending batch written in short transactions, then completed (see the
    module's docstring); deleted again if anything fails."""
    async with engine.begin() as conn:
        batch_id = await _new_batch(conn, job_file, now)
        round_id, number = await queue.create_round(conn, batch_id, RoundTrigger.SUBMIT, now)
    try:
        count = 0
        jobs = job_file.jobs()
        async with bulk_writer(engine) as conn:
            # Parsed outside the transaction: the lock is held only to write.
            while chunk := [_row(batch_id, job) for job in islice(jobs, SUBMIT_CHUNK)]:
                async with conn.begin():
                    await queue.insert_chunk(
                        conn,
                        chunk,
                        batch_id=batch_id,
                        round_id=round_id,
                        max_attempts=max_attempts,
                        now=utcnow(),
                        pending_until=utcnow() + PENDING_FOR,
                    )
                count += len(chunk)
        async with engine.begin() as conn:
            schedule = await _with_schedule(conn, job_file, batch_id, now)
            await queue.complete_batch(
                conn, batch_id, job_count=count, source_sha256=job_file.sha256, now=utcnow()
            )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _discard(engine, batch_id)
        raise
    return Submitted(batch_id, job_file.name, count, round_id, number, schedule)


async def _discard(engine: AsyncEngine, batch_id: int) -> None:
    """Delete a failed submit's pending batch; if that fails too, a later submit or
    worker start deletes it once its time has passed."""
    try:
        await queue.discard_batch(engine, batch_id)
    except Exception:
        log.warning("could not delete the pending batch %s now: it goes later", batch_id)


def _endpoint(job_file: JobFile, settings: Settings, override: str | None) -> EndpointConfig:
    """The endpoint the jobs go to; an unknown one is the flag's fault or the file's."""
    if override is not None:
        return settings.endpoint(override, option="--endpoint")
    if job_file.endpoint not in settings.endpoints:
        problem = settings.unknown_endpoint(job_file.endpoint)
        raise JobFileError(str(job_file.path), job_file.endpoint_line, "endpoint", problem)
    return settings.endpoint(job_file.endpoint)


async def submit(
    engine: AsyncEngine,
    path: Path,
    settings: Settings,
    *,
    endpoint: str | None = None,
    name: str | None = None,
    now: datetime | None = None,
    again: bool = False,
    require_key: bool = False,
    max_jobs: int | None = None,
) -> Submitted:
    """Validate and store a job file as a batch with its first round of queued runs.

    Unless ``again``, an identical submission already stored is returned or refused
    instead (see the module's docstring). ``require_key``: refuse (before writing
    anything) if the endpoint's API key is not in this environment, for a caller that
    sends the requests itself (`runner run`). ``max_jobs``: the most jobs the file may
    give [default: the settings' ``submit.max_jobs``].
    """
    max_jobs = max_jobs or settings.submit.max_jobs
    job_file = load_job_file(path, endpoint=endpoint, name=name, max_jobs=max_jobs)
    # Unknown endpoint, or a key we need now and lack: fail before writing anything.
    missing_key = _endpoint(job_file, settings, endpoint).missing_key()
    if missing_key and require_key:
        raise ConfigError(missing_key)
    if not again and (found := await _already_submitted(engine, job_file, path)):
        return replace(found, missing_key=missing_key)
    await queue.discard_stale_batches(engine, utcnow())
    max_attempts = job_file.max_attempts or settings.worker.max_attempts
    insert = _insert_at_once if engine.dialect.name == "postgresql" else _insert_in_chunks
    try:
        submitted = await insert(engine, job_file, max_attempts, now or utcnow())
    except IntegrityError:
        # The only unique key a submit can break is (batch, key): find the line to blame.
        duplicate = find_duplicate(load_job_file(path, endpoint=endpoint, name=name).jobs())
        if duplicate is None:
            raise
        field = "custom_id" if job_file.format == "openai-batch" else "key"
        raise JobFileError(
            str(path),
            duplicate.line,
            field,
            f"duplicate {field} {duplicate.key!r}: every job needs its own"
            + (" (use a key template with more variables, or repeat)" if field == "key" else ""),
        ) from None
    if submitted.job_count >= queue.ANALYZE_AFTER:
        await queue.analyze(engine)
    return replace(submitted, missing_key=missing_key)
