"""Read-only views for the CLI: batch status and one run's details.

Nothing here writes; queue state changes live in ``runner.db.queue``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.config import Price
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
    # model -> (prompt tokens, completion tokens) of its stored usage
    tokens_by_model: dict[str, tuple[int, int]] = field(default_factory=dict)
    # request kind (jobs.api) -> runs; succeeded responses whose status is "incomplete"
    kinds: dict[str, int] = field(default_factory=dict)
    incomplete: int = 0
    # Runs of jobs with a JSON schema: how many succeeded, and how many of those are valid.
    schema_checked: int = 0
    schema_valid: int = 0

    def cost(self, prices: Mapping[str, Price]) -> tuple[float | None, list[str]]:
        """USD cost of the tokens used, or None with the models that have no price."""
        unpriced = sorted(m for m in self.tokens_by_model if m not in prices)
        if unpriced:
            return None, unpriced
        return sum(prices[m].cost(p, c) for m, (p, c) in self.tokens_by_model.items()), []

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
    """A batch by id, or the latest batch with that name (not one still being submitted)."""
    query = select(Batch).where(Batch.pending_until.is_(None))
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
    by_model = {
        str(model): (int(prompt or 0), int(completion or 0))
        for model, prompt, completion in await conn.execute(
            select(Job.model, func.sum(Run.prompt_tokens), func.sum(Run.completion_tokens))
            .join(Job, Job.id == Run.job_id)
            .where(Run.round_id == rnd.id, Run.prompt_tokens.is_not(None))
            .group_by(Job.model)
        )
    }
    if rnd.model is not None:  # a replay that sent every job to another model
        by_model = {
            rnd.model: (sum(p for p, _ in by_model.values()), sum(c for _, c in by_model.values()))
        }
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
    kinds = await conn.execute(
        select(Job.api, func.count())
        .select_from(Run)
        .join(Job, Job.id == Run.job_id)
        .where(Run.round_id == rnd.id)
        .group_by(Job.api)
    )
    incomplete = await conn.scalar(
        select(func.count()).where(
            Run.round_id == rnd.id,
            Run.state == RunState.SUCCEEDED.value,
            Run.response_status == "incomplete",
        )
    )
    checked, valid = (
        await conn.execute(
            select(
                func.count(Run.schema_valid),
                func.count(Run.schema_valid).filter(Run.schema_valid.is_(True)),
            ).where(Run.round_id == rnd.id, Run.state == RunState.SUCCEEDED.value)
        )
    ).one()
    return RoundStatus(
        number=rnd.number,
        trigger=rnd.trigger,
        created_at=rnd.created_at,
        counts={str(k): int(v) for k, v in counts.items()},
        prompt_tokens=sum(p for p, _ in by_model.values()),
        completion_tokens=sum(c for _, c in by_model.values()),
        tokens_by_model=by_model,
        errors=[(str(t), int(c)) for t, c in errors],
        fingerprints=sorted(fingerprints, key=lambda f: (f is None, f or "")),
        endpoint=rnd.endpoint,
        model=rnd.model,
        kinds={str(api): int(count) for api, count in kinds},
        incomplete=int(incomplete or 0),
        schema_checked=int(checked or 0),
        schema_valid=int(valid or 0),
    )


async def batch_status(
    conn: AsyncConnection, ref: str | None, limit: int = 20
) -> list[BatchStatus]:
    """Status of one batch (all its rounds), or of the most recent batches."""
    if ref is not None:
        batches = [await resolve_batch(conn, ref)]
    else:
        rows = await conn.execute(
            select(Batch)
            .where(Batch.pending_until.is_(None))
            .order_by(Batch.id.desc())
            .limit(limit)
        )
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
            Job.api,
            queue.sent_hash().label("request_hash"),
            Job.body,
            Round.model.label("model_override"),
            Round.samples.label("samples_override"),
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
    model, samples = details.pop("model_override"), details.pop("samples_override")
    if details["api"] != "chat":
        samples = None  # only chat bodies have samples (n): see queue.sent_request
    if model is not None or samples is not None:
        details["body"] = queue.with_changes(details["body"], model=model, samples=samples)
    return details


@dataclass(frozen=True)
class RoundProgress:
    """Run counts of one round, for progress displays."""

    batch_id: int
    batch_name: str
    round_number: int
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(
            self.counts.get(s.value, 0)
            for s in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)
        )


async def rounds_progress(
    conn: AsyncConnection, round_ids: Sequence[int] | None, also: Sequence[int] = ()
) -> list[RoundProgress]:
    """Counts per state of ``round_ids`` or, if None, of every round with work left
    (plus the rounds in ``also``, e.g. those a worker already finished)."""
    if round_ids is None:
        active = select(Run.round_id).where(
            Run.state.in_([RunState.QUEUED.value, RunState.RUNNING.value])
        )
        wanted: ColumnElement[bool] = Run.round_id.in_(active.distinct().scalar_subquery())
        if also:
            wanted = wanted | Run.round_id.in_(list(also))
    else:
        wanted = Run.round_id.in_(list(round_ids))
    counts = await conn.execute(
        select(Run.round_id, Run.state, func.count())
        .where(wanted)
        .group_by(Run.round_id, Run.state)
    )
    by_round: dict[int, dict[str, int]] = {}
    for round_id, state, count in counts:
        by_round.setdefault(round_id, {})[state] = int(count)
    if not by_round:
        return []
    names = await conn.execute(
        select(Round.id, Round.number, Batch.id, Batch.name)
        .join(Batch, Round.batch_id == Batch.id)
        .where(Round.id.in_(list(by_round)))
        .order_by(Round.id)
    )
    return [RoundProgress(bid, bname, number, by_round[rid]) for rid, number, bid, bname in names]


async def round_ids_of(conn: AsyncConnection, batch: Batch, number: int | None) -> list[int]:
    """Every round of a batch, or only round ``number``."""
    query = select(Round.id).where(Round.batch_id == batch.id)
    if number is not None:
        query = query.where(Round.number == number)
    ids = list((await conn.execute(query.order_by(Round.number))).scalars())
    if not ids:
        raise NotFoundError(f"batch {batch.id} ({batch.name}) has no round {number}")
    return ids


@dataclass(frozen=True)
class BatchLine:
    """One line of ``runner batches``."""

    id: int
    name: str
    submitted_at: datetime
    job_count: int
    rounds: int
    last_round: int | None
    last_round_counts: dict[str, int]
    last_fingerprint: str | None


async def list_batches(conn: AsyncConnection, limit: int = 50) -> list[BatchLine]:
    """The most recent batches with their last round's counts and last fingerprint seen."""
    lines = []
    batches = await conn.execute(
        select(Batch).where(Batch.pending_until.is_(None)).order_by(Batch.id.desc()).limit(limit)
    )
    for batch in batches:
        rounds = (
            await conn.execute(
                select(func.count(), func.max(Round.number)).where(Round.batch_id == batch.id)
            )
        ).one()
        counts: dict[str, int] = {}
        if rounds[1] is not None:
            last = select(Round.id).where(Round.batch_id == batch.id, Round.number == rounds[1])
            counts = {
                str(state): int(n)
                for state, n in await conn.execute(
                    select(Run.state, func.count())
                    .where(Run.round_id == last.scalar_subquery())
                    .group_by(Run.state)
                )
            }
        fingerprint = await conn.scalar(
            select(Run.system_fingerprint)
            .join(Round, Round.id == Run.round_id)
            .where(Round.batch_id == batch.id, Run.state == RunState.SUCCEEDED.value)
            .order_by(Run.finished_at.desc())
            .limit(1)
        )
        lines.append(
            BatchLine(
                batch.id,
                batch.name,
                batch.submitted_at,
                batch.job_count,
                int(rounds[0]),
                rounds[1],
                counts,
                fingerprint,
            )
        )
    return lines
