"""Submitting: a batch, its jobs, its first round and their queued runs.

PostgreSQL writes a submit in one transaction. SQLite writes it in short ones
(``insert_chunk``) so that workers are never kept from its single write lock for
long; until ``complete_batch`` the batch is *pending* (``batches.pending_until`` set):
its runs are not claimed (``_common.visible_runs``) and it is not listed. A submit
that fails deletes its pending batch (``discard_batch``); one that died leaves it to
``discard_stale_batches``, once its ``pending_until`` has passed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import (
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.db.models import (
    Batch,
    Job,
    Round,
    RoundTrigger,
    Run,
    RunState,
)
from runner.db.types import UTCDateTime
from runner.errors import DatabaseError

# ---------------------------------------------------------------- submit


@dataclass(frozen=True)
class LastRound:
    """The latest round of a batch found by ``identical_batch``, as a submit sees it."""

    batch_id: int
    round_id: int
    number: int
    counts: dict[str, int]  # runs per state
    lease_until: datetime | None  # the latest lease of its running runs

    @property
    def left(self) -> int:
        """Runs not finished yet: queued or running."""
        return self.counts.get(RunState.QUEUED.value, 0) + self.counts.get(
            RunState.RUNNING.value, 0
        )


async def identical_batch(
    conn: AsyncConnection, *, name: str, source_sha256: str, endpoint: str
) -> LastRound | None:
    """The latest batch submitted from the same file bytes, under the same name, with its
    jobs going to ``endpoint`` (a file's jobs share one), and its latest round."""
    job_endpoint = select(Job.endpoint).where(Job.batch_id == Batch.id).limit(1)
    found = (
        await conn.execute(
            select(Round.batch_id, Round.id, Round.number)
            .join(Batch, Batch.id == Round.batch_id)
            .where(
                Batch.source_sha256 == source_sha256,
                Batch.name == name,
                Batch.pending_until.is_(None),
                job_endpoint.scalar_subquery() == endpoint,
            )
            .order_by(Batch.id.desc(), Round.number.desc())
            .limit(1)
        )
    ).one_or_none()
    if found is None:
        return None
    batch_id, round_id, number = found
    rows = await conn.execute(
        select(Run.state, func.count(), func.max(Run.lease_expires_at))
        .where(Run.round_id == round_id)
        .group_by(Run.state)
    )
    counts: dict[str, int] = {}
    lease_until = None
    for state, count, lease in rows:
        counts[str(state)] = int(count)
        if state == RunState.RUNNING.value:
            lease_until = lease
    return LastRound(int(batch_id), int(round_id), int(number), counts, lease_until)


async def insert_batch(
    conn: AsyncConnection,
    *,
    name: str,
    source_path: str,
    source_format: str,
    submitted_at: datetime,
    pending_until: datetime,
) -> int:
    """A new pending batch row (job count and sha256 are set by ``complete_batch``)."""
    result = await conn.execute(
        insert(Batch)
        .values(
            name=name,
            source_path=source_path,
            source_format=source_format,
            source_sha256="",
            submitted_at=submitted_at,
            job_count=0,
            pending_until=pending_until,
        )
        .returning(Batch.id)
    )
    return int(result.scalar_one())


_JOB_COLUMNS = (
    "batch_id",
    "key",
    "endpoint",
    "model",
    "body",
    "request_hash",
    "seed",
    "source_line",
    "api",
)
JOB_CHUNK = 2000  # jobs per INSERT on SQLite
_COPY_JOBS = f"COPY jobs ({', '.join(_JOB_COLUMNS)}) FROM STDIN"


async def insert_jobs(conn: AsyncConnection, rows: Iterable[dict[str, Any]]) -> int:
    """Insert jobs (dicts with the Job columns) as they come, in the connection's
    transaction; returns how many.

    PostgreSQL loads them with one COPY (psycopg's ``copy``) that streams while the file
    is still being parsed, so the server's work overlaps ours; SQLite takes chunks of
    ``JOB_CHUNK`` with executemany. A failure surfaces as SQLAlchemy's exception either
    way (a duplicate key is an ``IntegrityError``, which ``runner.submit`` turns into
    the line to blame).
    """
    if conn.dialect.name != "postgresql":
        count = 0
        source = iter(rows)
        while chunk := list(islice(source, JOB_CHUNK)):
            await conn.execute(insert(Job), chunk)
            count += len(chunk)
        return count
    import psycopg  # only the PostgreSQL backend has it loaded

    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    count = 0
    try:
        async with driver.cursor() as cursor, cursor.copy(_COPY_JOBS) as copy:
            for row in rows:
                await copy.write_row(tuple(row[c] for c in _JOB_COLUMNS))
                count += 1
    except psycopg.Error as exc:
        raise DBAPIError.instance(_COPY_JOBS, None, exc, psycopg.Error) from None
    return count


async def _renew(conn: AsyncConnection, batch_id: int, now: datetime, values: Any) -> None:
    """Update a pending batch whose ``pending_until`` has not passed; else it is lost (a
    cleaner may be deleting it as the batch of a dead submit)."""
    result = await conn.execute(
        update(Batch).where(Batch.id == batch_id, Batch.pending_until >= now).values(**values)
    )
    if result.rowcount != 1:
        raise DatabaseError(
            f"batch {batch_id} was still being written when its time ran out (a submit that "
            "waits this long for the database is taken for dead): submit the file again"
        )


async def insert_chunk(
    conn: AsyncConnection,
    rows: list[dict[str, Any]],
    *,
    batch_id: int,
    round_id: int,
    max_attempts: int,
    now: datetime,
    pending_until: datetime,
) -> None:
    """One short transaction of a SQLite submit: jobs, their queued runs (invisible while
    the batch is pending), and the batch's ``pending_until`` pushed on to ``pending_until``.

    ``now`` is the real time, which ``pending_until`` is measured against."""
    # Ids only grow and this transaction holds the write lock: the new jobs are the
    # batch's jobs above the largest id before them.
    after = await conn.scalar(select(func.coalesce(func.max(Job.id), 0)))
    await conn.execute(insert(Job), rows)
    # By id alone: with ``batch_id`` too SQLite would scan the batch's (batch, key) index,
    # every job written so far, at each chunk.
    await _enqueue(conn, round_id, Job.id > int(after or 0), max_attempts=max_attempts, now=now)
    await _renew(conn, batch_id, now, {"pending_until": pending_until})


async def complete_batch(
    conn: AsyncConnection, batch_id: int, *, job_count: int, source_sha256: str, now: datetime
) -> None:
    """The batch is whole: its count and file hash, and no longer pending (visible).

    ``now`` is the real time: a batch whose ``pending_until`` passed is not completed."""
    values = {"job_count": job_count, "source_sha256": source_sha256, "pending_until": None}
    await _renew(conn, batch_id, now, values)


DISCARD_CHUNK = 5000  # rows deleted per transaction when a pending batch is thrown away


async def discard_batch(engine: AsyncEngine, batch_id: int) -> None:
    """Delete a pending batch (its runs, jobs, round) in short transactions."""
    rounds = select(Round.id).where(Round.batch_id == batch_id)
    for table, where in ((Run, Run.round_id.in_(rounds)), (Job, Job.batch_id == batch_id)):
        while True:
            some = select(table.id).where(where).limit(DISCARD_CHUNK).scalar_subquery()
            async with engine.begin() as conn:
                deleted = await conn.execute(delete(table).where(table.id.in_(some)))
            if deleted.rowcount < DISCARD_CHUNK:
                break
    async with engine.begin() as conn:
        await conn.execute(delete(Round).where(Round.batch_id == batch_id))
        await conn.execute(
            delete(Batch).where(Batch.id == batch_id, Batch.pending_until.is_not(None))
        )


async def discard_stale_batches(engine: AsyncEngine, now: datetime) -> list[int]:
    """Delete the pending batches of submits that died (``pending_until`` before ``now``,
    the real time); their ids."""
    async with engine.connect() as conn:
        stale = list(await conn.scalars(select(Batch.id).where(Batch.pending_until < now)))
    for batch_id in stale:
        await discard_batch(engine, batch_id)
    return [int(b) for b in stale]


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
    return await _enqueue(
        conn, round_id, Job.batch_id == batch_id, max_attempts=max_attempts, now=now
    )


async def _enqueue(
    conn: AsyncConnection, round_id: int, jobs: Any, *, max_attempts: int, now: datetime
) -> int:
    """One queued run in ``round_id`` per job matching ``jobs``."""
    source = select(
        literal(round_id),
        Job.id,
        literal(RunState.QUEUED.value),
        literal(0),
        literal(max_attempts),
        literal(now, UTCDateTime()),
    ).where(jobs)
    result = await conn.execute(
        insert(Run).from_select(
            ["round_id", "job_id", "state", "attempts", "max_attempts", "available_at"], source
        )
    )
    return int(result.rowcount)
