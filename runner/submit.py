"""Submitting a job file: all of it in one transaction, or nothing.

Jobs stream from the parser into the database (one COPY on PostgreSQL, chunks on
SQLite), so a file of a million lines is never held in memory. Any error (parser,
duplicate key, database) rolls the whole transaction back: no batch row, no jobs, no
runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import EndpointConfig, Settings
from runner.db import queue
from runner.db.models import RoundTrigger
from runner.db.types import utcnow
from runner.errors import ConfigError, JobFileError, ScheduleError
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
    # Why no worker here could send its requests: its endpoint's key is not set.
    missing_key: str | None = None


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
    require_key: bool = False,
) -> Submitted:
    """Validate and store a job file as a batch with its first round of queued runs.

    ``require_key``: refuse (before writing anything) if the endpoint's API key is not
    in this environment, for a caller that sends the requests itself (`runner run`).
    """
    job_file = load_job_file(path, endpoint=endpoint, name=name)
    # Unknown endpoint, or a key we need now and lack: fail before writing anything.
    missing_key = _endpoint(job_file, settings, endpoint).missing_key()
    if missing_key and require_key:
        raise ConfigError(missing_key)
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
