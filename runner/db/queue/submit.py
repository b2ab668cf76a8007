"""Submitting: a batch, its jobs, its first round and their queued runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.db.models import (
    Batch,
    Job,
    Round,
    RoundTrigger,
    Run,
    RunState,
)
from runner.db.types import UTCDateTime

# ---------------------------------------------------------------- submit


async def insert_batch(
    conn: AsyncConnection,
    *,
    name: str,
    source_path: str,
    source_format: str,
    submitted_at: datetime,
) -> int:
    """A new batch row (job count and sha256 are set by ``complete_batch``)."""
    result = await conn.execute(
        insert(Batch)
        .values(
            name=name,
            source_path=source_path,
            source_format=source_format,
            source_sha256="",
            submitted_at=submitted_at,
            job_count=0,
        )
        .returning(Batch.id)
    )
    return int(result.scalar_one())


async def insert_jobs(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert a chunk of jobs (dicts with the Job columns)."""
    if rows:
        await conn.execute(insert(Job), list(rows))


async def complete_batch(
    conn: AsyncConnection, batch_id: int, *, job_count: int, source_sha256: str
) -> None:
    await conn.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(job_count=job_count, source_sha256=source_sha256)
    )


async def create_round(
    conn: AsyncConnection, batch_id: int, trigger: RoundTrigger, now: datetime
) -> tuple[int, int]:
    """A new round numbered after the batch's last one; returns (round id, number)."""
    last = await conn.scalar(
        select(func.coalesce(func.max(Round.number), 0)).where(Round.batch_id == batch_id)
    )
    number = int(last or 0) + 1
    result = await conn.execute(
        insert(Round)
        .values(batch_id=batch_id, number=number, trigger=trigger.value, created_at=now)
        .returning(Round.id)
    )
    return int(result.scalar_one()), number


async def enqueue_round(
    conn: AsyncConnection, round_id: int, batch_id: int, *, max_attempts: int, now: datetime
) -> int:
    """One queued run per job of the batch, in a single INSERT ... SELECT."""
    source = select(
        literal(round_id),
        Job.id,
        literal(RunState.QUEUED.value),
        literal(0),
        literal(max_attempts),
        literal(now, UTCDateTime()),
    ).where(Job.batch_id == batch_id)
    result = await conn.execute(
        insert(Run).from_select(
            ["round_id", "job_id", "state", "attempts", "max_attempts", "available_at"], source
        )
    )
    return int(result.rowcount)
