"""Storing what a try produced, fenced on (state, lease owner, attempt)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.db.models import (
    Attempt,
    Job,
    Round,
    Run,
    RunState,
)
from runner.db.queue._common import (
    _SUCCESS_COLUMNS,
    QueueEngine,
    _in_rounds,
    _not_for,
    _retry_deadlock,
    _transaction,
    sent_endpoint,
)

# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Outcome:
    """The result of one HTTP try of a claimed run, ready to be stored."""

    run_id: int
    attempt: int
    started_at: datetime
    finished_at: datetime
    latency_ms: float
    # succeeded: the run is done; retry: back to queued at retry_at; failed: done, with error.
    outcome: str
    http_status: int | None = None
    retry_at: datetime | None = None
    retry_after_ms: float | None = None  # what the server asked for, if anything
    # success fields
    response: str | None = None
    output: str | None = None
    outputs: str | None = None
    finish_reason: str | None = None
    response_model: str | None = None
    system_fingerprint: str | None = None
    provider_request_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    # failure fields
    error_type: str | None = None
    error_message: str | None = None


def _fence() -> Any:
    return and_(
        Run.id == bindparam("b_run_id"),
        Run.state == RunState.RUNNING.value,
        Run.lease_owner == bindparam("b_owner"),
        Run.attempts == bindparam("b_attempt"),
    )


def _params(owner: str, outcome: Outcome) -> dict[str, Any]:
    return {"b_run_id": outcome.run_id, "b_owner": owner, "b_attempt": outcome.attempt}


_STATE_AFTER = {
    "succeeded": RunState.SUCCEEDED.value,
    "failed": RunState.FAILED.value,
    "retry": RunState.QUEUED.value,
}


def _outcome_params(owner: str, o: Outcome) -> dict[str, Any]:
    done = o.outcome != "retry"
    return {
        **_params(owner, o),
        "b_state": _STATE_AFTER[o.outcome],
        "b_finished_at": o.finished_at if done else None,
        "b_available_at": o.finished_at if done else (o.retry_at or o.finished_at),
        "b_latency_ms": o.latency_ms,
        "b_error_type": o.error_type,
        "b_error_status": None if o.outcome == "succeeded" else o.http_status,
        "b_error_message": o.error_message,
        **{f"b_{c}": getattr(o, c) for c in _SUCCESS_COLUMNS},
    }


@functools.cache
def _store_statement() -> Any:
    """The fenced UPDATE of a run with its outcome, built once (one per batch row)."""
    return (
        update(Run)
        .where(_fence())
        .values(
            state=bindparam("b_state"),
            finished_at=bindparam("b_finished_at"),
            available_at=bindparam("b_available_at"),
            latency_ms=bindparam("b_latency_ms"),
            lease_owner=None,
            lease_expires_at=None,
            error_type=bindparam("b_error_type"),
            error_status=bindparam("b_error_status"),
            error_message=bindparam("b_error_message"),
            **{c: bindparam(f"b_{c}") for c in _SUCCESS_COLUMNS},
        )
    )


async def record(engine: QueueEngine, owner: str, outcomes: Sequence[Outcome]) -> int:
    """Store a batch of outcomes in one transaction; returns how many were fenced out.

    One statement for every outcome, in run id order: PostgreSQL locks the rows in
    the same order as ``heartbeat`` and ``release`` do, so they cannot deadlock.
    """
    ordered = sorted(outcomes, key=lambda o: o.run_id)
    attempts = [
        {
            "run_id": o.run_id,
            "number": o.attempt,
            "worker": owner,
            "started_at": o.started_at,
            "latency_ms": o.latency_ms,
            "outcome": o.outcome,
            "http_status": o.http_status,
            "error_type": o.error_type,
            "error_message": o.error_message,
            "retry_after_ms": o.retry_after_ms,
            "retry_at": o.retry_at,
        }
        for o in ordered
    ]

    params = [_outcome_params(owner, o) for o in ordered]

    def write(conn: Connection) -> int:
        result = conn.execute(_store_statement(), params)
        conn.execute(insert(Attempt), attempts)
        return int(result.rowcount)

    applied = await _retry_deadlock(lambda: _transaction(engine, write))
    return len(outcomes) - applied


async def unfinished_count(
    engine: AsyncEngine,
    round_ids: Sequence[int] | None = None,
    exclude_endpoints: Sequence[str] = (),
) -> int:
    """Runs still queued or running (in ``round_ids``, or anywhere): burst workers exit at 0."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(Run)
            .where(
                Run.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]),
                _in_rounds(round_ids),
                _not_for(exclude_endpoints),
            )
        )
        return int(count or 0)


async def unfinished_endpoints(
    engine: AsyncEngine, round_ids: Sequence[int] | None = None
) -> list[str]:
    """The endpoints that runs still queued or running (in ``round_ids``, or anywhere)
    send to: what a starting worker needs keys for."""
    async with engine.connect() as conn:
        names = await conn.scalars(
            select(sent_endpoint())
            .select_from(Run)
            .join(Job, Job.id == Run.job_id)
            .join(Round, Round.id == Run.round_id)
            .where(
                Run.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]),
                _in_rounds(round_ids),
            )
            .distinct()
        )
        return sorted(names)
