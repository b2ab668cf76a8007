"""Provider batches: chunks of a batch round's runs, claimed, recorded step by step, leased.

A chunk (``provider_batches``) is claimed in one transaction with its runs: the row, then
up to the endpoint's ``batch_max_requests`` queued runs of one round and endpoint,
picked ``FOR UPDATE SKIP LOCKED`` like any claim, so several workers never put a run in
two chunks. Its runs become ``running`` with ``lease_owner`` = ``batch:ID`` and no lease
expiry: they belong to the chunk, whose own lease a worker renews; a chunk whose lease
ran out is taken over by any worker (``take_over_chunks``). Every step of a chunk is a
fenced update (``lease_owner`` = this worker, and the state it moves from), written
before the next step that could be lost. Lines are stored with ``queue.record`` under
the chunk's owner name, so a chunk stored twice (a worker killed half-way) keeps
nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    delete,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.db.models import (
    Job,
    ProviderBatch,
    ProviderBatchState,
    Round,
    Run,
    RunState,
    Via,
)
from runner.db.queue._common import (
    _in_rounds,
    _not_for,
    _transaction,
    sent_endpoint,
    sent_request,
    visible_runs,
)

LINES_PAGE = 1000  # runs read at once while an input file is written


def chunk_owner(chunk_id: int) -> str:
    """The ``lease_owner`` of a chunk's runs, and the ``attempts.worker`` of its lines."""
    return f"batch:{chunk_id}"


def custom_id(run_id: int, attempt: int) -> str:
    """A line's ``custom_id``: its run and attempt (a new attempt is a new id)."""
    return f"run-{run_id}-{attempt}"


def parse_custom_id(text: str) -> tuple[int, int] | None:
    """(run id, attempt) of a ``custom_id`` we wrote; None for any other."""
    parts = text.split("-")
    if len(parts) != 3 or parts[0] != "run" or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]), int(parts[2])


@dataclass(frozen=True)
class Chunk:
    """A provider batch row as its worker needs it."""

    id: int
    round_id: int
    endpoint: str
    state: str
    request_count: int
    input_file_id: str | None
    uploaded_at: datetime | None
    provider_batch_id: str | None
    submitted_at: datetime | None
    provider_state: str | None
    output_file_id: str | None
    error_file_id: str | None
    errors: str | None
    ended_at: datetime | None

    @property
    def owner(self) -> str:
        return chunk_owner(self.id)


_CHUNK_COLUMNS = (
    ProviderBatch.id,
    ProviderBatch.round_id,
    ProviderBatch.endpoint,
    ProviderBatch.state,
    ProviderBatch.request_count,
    ProviderBatch.input_file_id,
    ProviderBatch.uploaded_at,
    ProviderBatch.provider_batch_id,
    ProviderBatch.submitted_at,
    ProviderBatch.provider_state,
    ProviderBatch.output_file_id,
    ProviderBatch.error_file_id,
    ProviderBatch.errors,
    ProviderBatch.ended_at,
)


def _chunk(row: Any) -> Chunk:
    return Chunk(*row)


def _batch_runs(round_ids: Sequence[int] | None, exclude: Sequence[str]) -> tuple[Any, ...]:
    """Queued-or-not runs of batch rounds that go in provider batches."""
    return (
        Round.via == Via.BATCH.value,
        Run.via.is_(None),
        _in_rounds(round_ids),
        _not_for(exclude),
        visible_runs(),
    )


async def claim_chunk(
    engine: AsyncEngine,
    owner: str,
    *,
    now: datetime,
    lease: timedelta,
    max_requests: Callable[[str], int],
    round_ids: Sequence[int] | None = None,
    exclude_endpoints: Sequence[str] = (),
) -> Chunk | None:
    """A new chunk of one round's queued runs for one endpoint, or None if none is left.

    ``max_requests(endpoint)``: the most runs in one chunk for that endpoint.
    """
    scope = _batch_runs(round_ids, exclude_endpoints)
    queued = (Run.state == RunState.QUEUED.value, Run.available_at <= now)

    # Looked up outside the write transaction: an idle worker takes no write lock.
    async with engine.connect() as conn:
        # Most databases have no batch round: then one look at the (small) rounds table.
        if (
            await conn.execute(select(Round.id).where(Round.via == Via.BATCH.value).limit(1))
        ).first() is None:
            return None
        found = (
            await conn.execute(
                select(Run.round_id, sent_endpoint())
                .join(Job, Job.id == Run.job_id)
                .join(Round, Round.id == Run.round_id)
                .where(*queued, *scope)
                .order_by(Run.available_at, Run.id)
                .limit(1)
            )
        ).one_or_none()
    if found is None:
        return None
    round_id, endpoint = int(found[0]), str(found[1])

    def transaction(conn: Connection) -> Chunk | None:
        chunk_id = conn.execute(
            insert(ProviderBatch)
            .values(
                round_id=round_id,
                endpoint=endpoint,
                state=ProviderBatchState.PREPARING.value,
                lease_owner=owner,
                lease_expires_at=now + lease,
                created_at=now,
                request_count=0,
            )
            .returning(ProviderBatch.id)
        ).scalar_one()
        picked = (
            select(Run.id)
            .join(Job, Job.id == Run.job_id)
            .join(Round, Round.id == Run.round_id)
            .where(*queued, *scope, Run.round_id == round_id, sent_endpoint() == endpoint)
            .order_by(Run.id)
            .limit(max_requests(endpoint))
            .with_for_update(skip_locked=True, of=Run)
            .scalar_subquery()
        )
        taken = conn.execute(
            update(Run)
            .where(Run.id.in_(picked))
            .values(
                state=RunState.RUNNING.value,
                lease_owner=chunk_owner(chunk_id),
                lease_expires_at=None,
                attempts=Run.attempts + 1,
                sent_attempt=Run.attempts + 1,
                started_at=func.coalesce(Run.started_at, now),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if not taken:  # another worker took them between the look and the claim
            conn.execute(delete(ProviderBatch).where(ProviderBatch.id == chunk_id))
            return None
        conn.execute(
            update(ProviderBatch)
            .where(ProviderBatch.id == chunk_id)
            .values(request_count=int(taken))
        )
        row = conn.execute(select(*_CHUNK_COLUMNS).where(ProviderBatch.id == chunk_id)).one()
        return _chunk(row)

    return await _transaction(engine, transaction)


async def take_over_chunks(
    engine: AsyncEngine,
    owner: str,
    *,
    now: datetime,
    lease: timedelta,
    round_ids: Sequence[int] | None = None,
    limit: int = 10,
) -> list[Chunk]:
    """Unfinished chunks whose worker's lease ran out (it died, or stopped): now ours."""
    rounds = true() if round_ids is None else ProviderBatch.round_id.in_(list(round_ids))
    left = (
        ProviderBatch.state != ProviderBatchState.DONE.value,
        ProviderBatch.lease_expires_at < now,
        rounds,
    )
    expired = (
        select(ProviderBatch.id)
        .where(*left)
        .order_by(ProviderBatch.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )

    async with engine.connect() as conn:  # an idle worker takes no write lock
        if (await conn.execute(select(ProviderBatch.id).where(*left).limit(1))).first() is None:
            return []

    def transaction(conn: Connection) -> list[Chunk]:
        rows = conn.execute(
            update(ProviderBatch)
            .where(ProviderBatch.id.in_(expired))
            .values(lease_owner=owner, lease_expires_at=now + lease)
            .returning(*_CHUNK_COLUMNS)
        )
        return sorted((_chunk(row) for row in rows), key=lambda c: c.id)

    return await _transaction(engine, transaction)


async def renew_chunks(
    engine: AsyncEngine, owner: str, ids: Sequence[int], *, now: datetime, lease: timedelta
) -> set[int]:
    """Extend the leases ``owner`` still holds among ``ids``; returns those ids."""
    if not ids:
        return set()
    async with engine.begin() as conn:
        rows = await conn.execute(
            update(ProviderBatch)
            .where(
                ProviderBatch.id.in_(sorted(ids)),
                ProviderBatch.lease_owner == owner,
                ProviderBatch.state != ProviderBatchState.DONE.value,
            )
            .values(lease_expires_at=now + lease)
            .returning(ProviderBatch.id)
        )
        return {int(i) for i in rows.scalars()}


async def release_chunks(
    engine: AsyncEngine, owner: str, ids: Sequence[int], now: datetime
) -> None:
    """A stopping worker's chunks: any worker may take them over at once."""
    if not ids:
        return
    async with engine.begin() as conn:
        await conn.execute(
            update(ProviderBatch)
            .where(ProviderBatch.id.in_(sorted(ids)), ProviderBatch.lease_owner == owner)
            .values(lease_expires_at=now)
        )


@dataclass(frozen=True)
class ChunkRequest:
    """One line of a chunk's input file."""

    run_id: int
    attempt: int
    body: str


async def chunk_requests(
    engine: AsyncEngine, chunk_id: int, *, after: int = 0, limit: int = LINES_PAGE
) -> list[ChunkRequest]:
    """The next ``limit`` runs the chunk holds with an id above ``after``, in id order,
    with the body each sends (its round's overrides applied)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                Run.id,
                Run.attempts,
                Job.endpoint,
                Job.model,
                Job.body,
                Round.endpoint,
                Round.model,
                Round.samples,
            )
            .join(Job, Job.id == Run.job_id)
            .join(Round, Round.id == Run.round_id)
            .where(
                Run.lease_owner == chunk_owner(chunk_id),
                Run.state == RunState.RUNNING.value,
                Run.id > after,
            )
            .order_by(Run.id)
            .limit(limit)
        )
        return [
            ChunkRequest(
                int(row[0]),
                int(row[1]),
                sent_request(
                    row[2],
                    row[3],
                    row[4],
                    endpoint_override=row[5],
                    model_override=row[6],
                    samples_override=row[7],
                ).body,
            )
            for row in rows
        ]


async def held_runs(engine: AsyncEngine, chunk_id: int) -> list[tuple[int, int, int]]:
    """(run id, attempt, max attempts) of the runs the chunk still holds."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Run.id, Run.attempts, Run.max_attempts)
            .where(
                Run.lease_owner == chunk_owner(chunk_id),
                Run.state == RunState.RUNNING.value,
            )
            .order_by(Run.id)
        )
        return [(int(a), int(b), int(c)) for a, b, c in rows]


async def held_count(engine: AsyncEngine, chunk_id: int) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(Run)
            .where(
                Run.lease_owner == chunk_owner(chunk_id),
                Run.state == RunState.RUNNING.value,
            )
        )
        return int(count or 0)


async def put_back(
    engine: AsyncEngine, chunk: Chunk, owner: str, run_ids: Sequence[int], now: datetime
) -> bool:
    """Runs a chunk holds and will not send (beyond its size limit): queued again, their
    try not counted. False if the chunk is no longer ``owner``'s."""

    def transaction(conn: Connection) -> bool:
        held = conn.execute(
            select(ProviderBatch.id)
            .where(
                ProviderBatch.id == chunk.id,
                ProviderBatch.lease_owner == owner,
                ProviderBatch.state == ProviderBatchState.PREPARING.value,
            )
            .with_for_update()
        ).one_or_none()
        if held is None:
            return False
        released = conn.execute(
            update(Run)
            .where(
                Run.id.in_(sorted(run_ids)),
                Run.lease_owner == chunk.owner,
                Run.state == RunState.RUNNING.value,
            )
            .values(
                state=RunState.QUEUED.value,
                lease_owner=None,
                available_at=now,
                attempts=Run.attempts - 1,
                sent_attempt=Run.attempts - 1,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        conn.execute(
            update(ProviderBatch)
            .where(ProviderBatch.id == chunk.id)
            .values(request_count=ProviderBatch.request_count - int(released))
        )
        return True

    return await _transaction(engine, transaction)


def _fenced(
    conn: Connection, chunk: Chunk, owner: str, state: ProviderBatchState, values: dict[str, Any]
) -> bool:
    result = conn.execute(
        update(ProviderBatch)
        .where(
            ProviderBatch.id == chunk.id,
            ProviderBatch.lease_owner == owner,
            ProviderBatch.state == state.value,
        )
        .values(**values)
    )
    return bool(result.rowcount)


async def advance_chunk(
    engine: AsyncEngine,
    chunk: Chunk,
    owner: str,
    *,
    expect: ProviderBatchState,
    **values: Any,
) -> bool:
    """One step of a chunk: set ``values`` if ``owner`` still holds it in state
    ``expect``; False if not (it passed to another worker)."""

    def transaction(conn: Connection) -> bool:
        return _fenced(conn, chunk, owner, expect, values)

    return await _transaction(engine, transaction)


async def unfinished_chunks(engine: AsyncEngine, round_ids: Sequence[int]) -> int:
    """Provider batches of these rounds not done yet."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(ProviderBatch)
            .where(
                ProviderBatch.round_id.in_(list(round_ids)),
                ProviderBatch.state != ProviderBatchState.DONE.value,
            )
        )
        return int(count or 0)
