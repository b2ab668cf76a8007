"""Replay rounds: overrides, job selection, reuse of stored results; comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.db.models import (
    Comparison,
    ComparisonItem,
    Job,
    Round,
    RoundTrigger,
    Run,
    RunState,
)
from runner.db.queue._common import (
    _SUCCESS_COLUMNS,
    sent_endpoint,
    sent_hash,
    sent_request,
)
from runner.db.queue.submit import create_round
from runner.hashing import request_hash

# ---------------------------------------------------------------- replay
#
# A replay round re-runs jobs of a batch. Its overrides are columns of the round
# (``rounds.endpoint``, ``rounds.model``, ``rounds.samples``), applied when a run is claimed (see
# ``sent_request``): a model override replaces only the body's ``model``, and the hash
# of the body that is then sent is stored in ``runs.request_hash``. ``--reuse`` copies
# a stored successful result of the same request to the same endpoint instead of
# sending it again (``runs.reused_from_run_id`` names the run that made the request).

REUSE_CHUNK = 500
ITEM_CHUNK = 1000

# What a reused run copies from the run whose result it takes.
_REUSED_COLUMNS = (*_SUCCESS_COLUMNS, "latency_ms")


async def create_replay_round(
    conn: AsyncConnection,
    batch_id: int,
    *,
    now: datetime,
    endpoint: str | None,
    model: str | None,
    selection: str,
    reuse: bool,
    samples: int | None = None,
) -> tuple[int, int]:
    """A new ``replay`` round with its overrides recorded; returns (round id, number)."""
    round_id, number = await create_round(conn, batch_id, RoundTrigger.REPLAY, now)
    await conn.execute(
        update(Round)
        .where(Round.id == round_id)
        .values(endpoint=endpoint, model=model, samples=samples, selection=selection, reuse=reuse)
    )
    return round_id, number


async def sent_hashes(
    conn: AsyncConnection, job_ids: Sequence[int], model: str | None, samples: int | None
) -> list[tuple[int, str | None]]:
    """(job id, hash of the body a round with these overrides sends, or None when it is
    the job's own body), by job id."""
    if model is None and samples is None:
        return [(job_id, None) for job_id in sorted(job_ids)]
    rows = await conn.execute(
        select(Job.id, Job.endpoint, Job.model, Job.body, Job.api).where(Job.id.in_(list(job_ids)))
    )
    runs: list[tuple[int, str | None]] = []
    for job_id, endpoint, job_model, body, api in rows:
        sent = sent_request(
            endpoint,
            job_model,
            body,
            endpoint_override=None,
            model_override=model,
            samples_override=samples,
            api=api,
        )
        runs.append((job_id, None if sent.body == body else request_hash(sent.body)))
    return sorted(runs)


async def enqueue_jobs(
    conn: AsyncConnection,
    round_id: int,
    runs: Sequence[tuple[int, str | None]],
    *,
    max_attempts: int,
    now: datetime,
) -> int:
    """One queued run per ``(job id, hash of the body it sends, or None: the job's)``."""
    if not runs:
        return 0
    await conn.execute(
        insert(Run),
        [
            {
                "round_id": round_id,
                "job_id": job_id,
                "state": RunState.QUEUED.value,
                "attempts": 0,
                "max_attempts": max_attempts,
                "available_at": now,
                "request_hash": sent,
            }
            for job_id, sent in runs
        ],
    )
    return len(runs)


async def reuse_results(conn: AsyncConnection, round_id: int, now: datetime) -> int:
    """Turn queued runs of a round into copies of stored results of the same request.

    A stored result qualifies when its run succeeded, sent a body with the same hash to
    the same endpoint, and belongs to another round. The job's own latest result is
    preferred, else the latest one. Only untouched queued runs (no attempt yet) are
    changed, so a worker that already claimed one keeps it. Returns how many were reused.
    """
    targets = (
        await conn.execute(
            select(
                Run.id,
                Run.job_id,
                sent_hash().label("sent_hash"),
                sent_endpoint().label("sent_endpoint"),
            )
            .join(Job, Job.id == Run.job_id)
            .join(Round, Round.id == Run.round_id)
            .where(
                Run.round_id == round_id,
                Run.state == RunState.QUEUED.value,
                Run.attempts == 0,
            )
            .order_by(Run.id)
        )
    ).all()
    reused = 0
    for start in range(0, len(targets), REUSE_CHUNK):
        chunk = targets[start : start + REUSE_CHUNK]
        chosen = await _reusable(conn, round_id, chunk)
        if not chosen:
            continue
        sources = {
            row.id: row
            for row in await conn.execute(
                select(Run.id, *(getattr(Run, c) for c in _REUSED_COLUMNS)).where(
                    Run.id.in_(sorted({source for source, _ in chosen.values()}))
                )
            )
        }
        stmt = (
            update(Run)
            .where(
                Run.id == bindparam("b_run_id"),
                Run.state == RunState.QUEUED.value,
                Run.attempts == 0,
            )
            .values(
                state=RunState.SUCCEEDED.value,
                finished_at=now,
                reused_from_run_id=bindparam("b_reused_from"),
                error_type=None,
                error_status=None,
                error_message=None,
                **{c: bindparam(f"b_{c}") for c in _REUSED_COLUMNS},
            )
        )
        params = [
            {
                "b_run_id": run_id,
                "b_reused_from": origin,
                **{f"b_{c}": getattr(sources[source], c) for c in _REUSED_COLUMNS},
            }
            for run_id, (source, origin) in sorted(chosen.items())
        ]
        reused += int((await conn.execute(stmt, params)).rowcount)
    return reused


async def _reusable(
    conn: AsyncConnection, round_id: int, targets: Sequence[Any]
) -> dict[int, tuple[int, int]]:
    """For each target run that has one: (run to copy, run that made the request)."""
    hashes = sorted({t.sent_hash for t in targets})
    candidates = await conn.execute(
        select(
            Run.id,
            Run.job_id,
            Run.reused_from_run_id,
            sent_hash().label("sent_hash"),
            sent_endpoint().label("sent_endpoint"),
        )
        .join(Job, Job.id == Run.job_id)
        .join(Round, Round.id == Run.round_id)
        .where(
            Run.state == RunState.SUCCEEDED.value,
            Run.round_id != round_id,
            or_(
                Run.request_hash.in_(hashes),
                and_(Run.request_hash.is_(None), Job.request_hash.in_(hashes)),
            ),
        )
        .order_by(Run.id)
    )
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    own: dict[tuple[int, str, str], tuple[int, int]] = {}
    for c in candidates:  # ascending ids: the last one seen is the latest
        pick = (int(c.id), int(c.reused_from_run_id or c.id))
        latest[(c.sent_hash, c.sent_endpoint)] = pick
        own[(c.job_id, c.sent_hash, c.sent_endpoint)] = pick
    chosen = {}
    for t in targets:
        found = own.get((t.job_id, t.sent_hash, t.sent_endpoint)) or latest.get(
            (t.sent_hash, t.sent_endpoint)
        )
        if found is not None:
            chosen[int(t.id)] = found
    return chosen


async def insert_comparison(
    conn: AsyncConnection, comparison: dict[str, Any], items: Sequence[dict[str, Any]]
) -> int:
    """Store one comparison and its per-job items; returns the comparison id."""
    result = await conn.execute(insert(Comparison).values(**comparison).returning(Comparison.id))
    comparison_id = int(result.scalar_one())
    for start in range(0, len(items), ITEM_CHUNK):
        await conn.execute(
            insert(ComparisonItem),
            [
                {**item, "comparison_id": comparison_id}
                for item in items[start : start + ITEM_CHUNK]
            ],
        )
    return comparison_id
