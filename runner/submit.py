"""Submitting a job file: all of it in one transaction, or nothing.

Jobs stream from the parser into the database (one COPY on PostgreSQL, chunks on
SQLite), so a file of a million lines is never held in memory. Any error (parser,
duplicate key, database) rolls the whole transaction back: no batch row, no jobs, no
runs.

A file whose identical submission is already stored (same bytes, batch name and
endpoint) is not queued twice: if that batch's latest round has runs left, ``submit``
returns it (``Submitted.resumed``) for the caller to work; if it finished,
``AlreadySubmittedError`` says so. ``again=True`` queues a new batch regardless.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import EndpointConfig, Settings
from runner.db import queue
from runner.db.models import RoundTrigger, RunState
from runner.db.types import utcnow
from runner.errors import AlreadySubmittedError, ConfigError, JobFileError, ScheduleError
from runner.jobfile import JobFile, find_duplicate, load_job_file
from runner.schedule import create_schedule


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
    }


async def _insert(
    engine: AsyncEngine, job_file: JobFile, settings: Settings, now: datetime
) -> Submitted:
    async with engine.begin() as conn:
        batch_id = await queue.insert_batch(
            conn,
            name=job_file.name,
            source_path=str(job_file.path),
            source_format=job_file.format,
            submitted_at=now,
        )
        schedule = None
        if job_file.schedule is not None:  # before the jobs: a taken name fails fast
            try:
                schedule = await create_schedule(
                    conn, job_file.schedule, batch_id, job_file.name, now
                )
            except ScheduleError as exc:
                raise JobFileError(str(job_file.path), None, "schedule", exc.message) from None
        count = await queue.insert_jobs(conn, (_row(batch_id, job) for job in job_file.jobs()))
        await queue.complete_batch(conn, batch_id, job_count=count, source_sha256=job_file.sha256)
        round_id, number = await queue.create_round(conn, batch_id, RoundTrigger.SUBMIT, now)
        max_attempts = job_file.max_attempts or settings.worker.max_attempts
        await queue.enqueue_round(conn, round_id, batch_id, max_attempts=max_attempts, now=now)
    return Submitted(batch_id, job_file.name, count, round_id, number, schedule)


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
) -> Submitted:
    """Validate and store a job file as a batch with its first round of queued runs.

    Unless ``again``, an identical submission already stored is returned or refused
    instead (see the module's docstring). ``require_key``: refuse (before writing
    anything) if the endpoint's API key is not in this environment, for a caller that
    sends the requests itself (`runner run`).
    """
    job_file = load_job_file(path, endpoint=endpoint, name=name)
    # Unknown endpoint, or a key we need now and lack: fail before writing anything.
    missing_key = _endpoint(job_file, settings, endpoint).missing_key()
    if missing_key and require_key:
        raise ConfigError(missing_key)
    if not again and (found := await _already_submitted(engine, job_file, path)):
        return replace(found, missing_key=missing_key)
    try:
        submitted = await _insert(engine, job_file, settings, now or utcnow())
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
