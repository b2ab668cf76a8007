"""Read-only views for the CLI: batch status and one run's details.

Nothing here writes; queue state changes live in ``runner.db.queue``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.db import queue
from runner.db.models import Batch, Job, Round, Run, RunState
from runner.errors import NotFoundError


@dataclass(frozen=True)
class RoundStatus:
    number: int
    trigger: str
    created_at: datetime
    counts: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    errors: list[tuple[str, int]]  # (error type, count) of failed runs
    fingerprints: list[str | None]
    endpoint: str | None = None  # a replay round's overrides (see runner/replay.py)
    model: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(
            self.counts.get(s.value, 0)
            for s in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)
        )


@dataclass(frozen=True)
class BatchStatus:
    id: int
    name: str
    source_path: str
    submitted_at: datetime
    job_count: int
    rounds: list[RoundStatus] = field(default_factory=list)


async def resolve_batch(conn: AsyncConnection, ref: str) -> Batch:
    """A batch by id, or the latest batch with that name."""
    query = select(Batch)
    if ref.isdigit():
        query = query.where(Batch.id == int(ref))
    else:
        query = query.where(Batch.name == ref).order_by(Batch.id.desc()).limit(1)
    batch = (await conn.execute(query)).one_or_none()
    if batch is None:
        raise NotFoundError(f"no batch {ref!r} (give a batch id or name; see `runner status`)")
    return Batch(**batch._mapping)


async def _round_status(conn: AsyncConnection, rnd: Any) -> RoundStatus:
    counts = dict(
        (
            await conn.execute(
                select(Run.state, func.count()).where(Run.round_id == rnd.id).group_by(Run.state)
            )
        ).all()
    )
    tokens = (
        await conn.execute(
            select(
                func.coalesce(func.sum(Run.prompt_tokens), 0),
                func.coalesce(func.sum(Run.completion_tokens), 0),
            ).where(Run.round_id == rnd.id)
        )
    ).one()
    errors = await conn.execute(
        select(Run.error_type, func.count())
        .where(Run.round_id == rnd.id, Run.state == RunState.FAILED.value)
        .group_by(Run.error_type)
        .order_by(func.count().desc())
    )
    fingerprints = (
        await conn.execute(
            select(Run.system_fingerprint)
            .where(Run.round_id == rnd.id, Run.state == RunState.SUCCEEDED.value)
            .distinct()
        )
    ).scalars()
    return RoundStatus(
        number=rnd.number,
        trigger=rnd.trigger,
        created_at=rnd.created_at,
        counts={str(k): int(v) for k, v in counts.items()},
        prompt_tokens=int(tokens[0] or 0),
        completion_tokens=int(tokens[1] or 0),
        errors=[(str(t), int(c)) for t, c in errors],
        fingerprints=sorted(fingerprints, key=lambda f: (f is None, f or "")),
        endpoint=rnd.endpoint,
        model=rnd.model,
    )


async def batch_status(
    conn: AsyncConnection, ref: str | None, limit: int = 20
) -> list[BatchStatus]:
    """Status of one batch (all its rounds), or of the most recent batches."""
    if ref is not None:
        batches = [await resolve_batch(conn, ref)]
    else:
        rows = await conn.execute(select(Batch).order_by(Batch.id.desc()).limit(limit))
        batches = [Batch(**row._mapping) for row in rows]
    result = []
    for batch in batches:
        rounds = await conn.execute(
            select(Round).where(Round.batch_id == batch.id).order_by(Round.number)
        )
        result.append(
            BatchStatus(
                id=batch.id,
                name=batch.name,
                source_path=batch.source_path,
                submitted_at=batch.submitted_at,
                job_count=batch.job_count,
                rounds=[await _round_status(conn, r) for r in rounds],
            )
        )
    return result


async def run_details(
    conn: AsyncConnection,
    run_id: int | None = None,
    *,
    batch: str | None = None,
    key: str | None = None,
    round_number: int | None = None,
) -> dict[str, Any]:
    """Everything stored about one run and its job, as plain values.

    ``endpoint``, ``model``, ``request_hash`` and ``body`` are what the run sent: the
    job's, with its round's replay overrides applied (see runner/replay.py).
    """
    query = (
        select(
            *(c for c in Run.__table__.columns if c.name != "request_hash"),
            Job.batch_id,
            Batch.name.label("batch_name"),
            Round.number.label("round_number"),
            Job.key,
            queue.sent_endpoint().label("endpoint"),
            func.coalesce(Round.model, Job.model).label("model"),
            Job.seed,
            queue.sent_hash().label("request_hash"),
            Job.body,
            Round.model.label("model_override"),
        )
        .join(Job, Run.job_id == Job.id)
        .join(Round, Run.round_id == Round.id)
        .join(Batch, Job.batch_id == Batch.id)
    )
    if run_id is not None:
        query = query.where(Run.id == run_id)
        what = f"run {run_id}"
    else:
        assert batch is not None and key is not None
        found = await resolve_batch(conn, batch)
        query = query.where(Job.batch_id == found.id, Job.key == key)
        if round_number is not None:
            query = query.where(Round.number == round_number)
        query = query.order_by(Round.number.desc()).limit(1)
        what = f"job {key!r} in batch {batch!r}" + (
            f" round {round_number}" if round_number is not None else ""
        )
    row = (await conn.execute(query)).one_or_none()
    if row is None:
        raise NotFoundError(f"no {what}")
    details = dict(row._mapping)
    override = details.pop("model_override")
    if override is not None:
        details["body"] = queue.with_model(details["body"], override)
    return details
