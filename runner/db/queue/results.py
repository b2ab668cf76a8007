"""Storing what a try produced, fenced on (state, lease owner, attempt)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    and_,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.db.models import (
    Attempt,
    AttemptOutcome,
    Job,
    Round,
    Run,
    RunState,
)
from runner.db.queue._common import (
    _SUCCESS_COLUMNS,
    QueueEngine,
    _in_rounds,
    _retry_deadlock,
    _transaction,
    sent_endpoint,
    visible_runs,
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
    # succeeded: the run is done; retry: back to queued at retry_at; failed: done, with
    # error; released: back to queued at once, the try not counted (its endpoint was given
    # up on). An AttemptOutcome value; ``record`` stores it as ``discarded`` instead when
    # the run was no longer this worker's.
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
    n_honoured: bool | None = None  # several samples asked: all in one response?
    response_status: str | None = None  # responses: completed, incomplete, ...
    incomplete_details: str | None = None
    service_tier: str | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    embedding: bytes | None = None  # embeddings: the vectors (runner.kinds.vectors)
    embedding_dimensions: int | None = None
    schema_valid: bool | None = None  # a JSON schema asked: do all outputs follow it?
    tool_calls: str | None = None  # canonical JSON [{"name", "arguments"}]
    # failure fields
    error_type: str | None = None
    error_message: str | None = None
    error_body: str | None = None  # the error response's body as the server sent it


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
    AttemptOutcome.SUCCEEDED.value: RunState.SUCCEEDED.value,
    AttemptOutcome.FAILED.value: RunState.FAILED.value,
    AttemptOutcome.RETRY.value: RunState.QUEUED.value,
    AttemptOutcome.RELEASED.value: RunState.QUEUED.value,
}


def _outcome_params(owner: str, o: Outcome) -> dict[str, Any]:
    queued = _STATE_AFTER[o.outcome] == RunState.QUEUED.value
    success = o.outcome == AttemptOutcome.SUCCEEDED.value
    return {
        **_params(owner, o),
        "b_state": _STATE_AFTER[o.outcome],
        "b_finished_at": None if queued else o.finished_at,
        "b_available_at": (o.retry_at or o.finished_at) if queued else o.finished_at,
        # A released try does not count: the next claim makes the same attempt number.
        "b_uncounted": 1 if o.outcome == AttemptOutcome.RELEASED.value else 0,
        "b_latency_ms": o.latency_ms,
        "b_error_type": o.error_type,
        "b_error_status": None if success else o.http_status,
        "b_error_message": o.error_message,
        "b_error_body": o.error_body,
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
            attempts=Run.attempts - bindparam("b_uncounted", type_=Integer()),
            error_type=bindparam("b_error_type"),
            error_status=bindparam("b_error_status"),
            error_message=bindparam("b_error_message"),
            error_body=bindparam("b_error_body"),
            **{c: bindparam(f"b_{c}") for c in _SUCCESS_COLUMNS},
        )
    )


@functools.cache
def _held_statement() -> Any:
    """The runs among ``ids`` that ``owner`` still holds, with their attempt numbers,
    locked in id order (the order ``heartbeat`` and ``release`` lock them in)."""
    return (
        select(Run.id, Run.attempts)
        .where(
            Run.id.in_(bindparam("ids", expanding=True)),
            Run.state == RunState.RUNNING.value,
            Run.lease_owner == bindparam("owner"),
        )
        .order_by(Run.id)
        .with_for_update()
    )


def _attempt_row(owner: str, o: Outcome, stored: bool) -> dict[str, Any]:
    return {
        "run_id": o.run_id,
        "number": o.attempt,
        "worker": owner,
        "started_at": o.started_at,
        "latency_ms": o.latency_ms,
        "outcome": o.outcome if stored else AttemptOutcome.DISCARDED.value,
        "http_status": o.http_status,
        "error_type": o.error_type,
        "error_message": o.error_message,
        "retry_after_ms": o.retry_after_ms,
        "retry_at": o.retry_at if stored else None,
        "provider_request_id": o.provider_request_id,
        "error_body": o.error_body,
    }


@functools.cache
def _recorded_statement() -> Any:
    """Which of the runs ``ids`` already have an attempt row of ``owner``, by number."""
    return select(Attempt.run_id, Attempt.number).where(
        Attempt.run_id.in_(bindparam("ids", expanding=True)),
        Attempt.worker == bindparam("owner"),
    )


@functools.cache
def _sent_statement() -> Any:
    """Mark the runs among ``ids`` that ``owner`` holds as sent at their current attempt."""
    return (
        update(Run)
        .where(
            Run.id.in_(bindparam("ids", expanding=True)),
            Run.state == RunState.RUNNING.value,
            Run.lease_owner == bindparam("owner"),
        )
        .values(sent_attempt=Run.attempts)
        .execution_options(synchronize_session=False)
    )


async def record(
    engine: QueueEngine,
    owner: str,
    outcomes: Sequence[Outcome],
    *,
    sent: Sequence[int] = (),
    again: bool = False,
) -> list[Outcome]:
    """Store a batch of outcomes in one transaction; returns those that were discarded.

    An outcome is stored on its run only while ``owner`` still holds that run at the same
    attempt (the fence); one that is not (the run was cancelled, or its lease passed to
    another worker) is discarded, and its attempt row says so. The runs are locked first,
    in run id order: PostgreSQL locks rows in the same order as ``heartbeat`` and
    ``release`` do, so they cannot deadlock, and no one can take a run over between the
    check and the store.

    ``sent``: runs whose request this worker has sent since the last batch; their try
    counts if the worker dies before storing its outcome (``runs.sent_attempt``).

    ``again``: this batch is being stored again after an error that may have hidden a
    commit (a connection lost during it): outcomes whose attempt row this worker already
    wrote are left out, so nothing is stored twice.
    """
    ordered = sorted(outcomes, key=lambda o: o.run_id)
    ids = [o.run_id for o in ordered]
    # Locked together, in id order, so that the marks cannot deadlock with a heartbeat.
    locked = sorted(set(ids).union(sent))

    def write(conn: Connection) -> list[Outcome]:
        nonlocal ordered
        if again:  # the last try may have committed before its connection was lost
            done = set(conn.execute(_recorded_statement(), {"ids": ids, "owner": owner}).all())
            ordered = [o for o in ordered if (o.run_id, o.attempt) not in done]
        if not ordered and not sent:
            return []
        held = {
            row.id: row.attempts
            for row in conn.execute(_held_statement(), {"ids": locked, "owner": owner})
        }
        if sent:
            conn.execute(_sent_statement(), {"ids": list(sent), "owner": owner})
        if not ordered:
            return []
        stored = [o for o in ordered if held.get(o.run_id) == o.attempt]
        if stored:
            params = [_outcome_params(owner, o) for o in stored]
            result = conn.execute(_store_statement(), params)
            # The rows are locked: what the check found held, the fenced update must find.
            if result.rowcount != len(stored):
                raise RuntimeError(
                    f"stored {result.rowcount} of {len(stored)} held runs: fence and lock disagree"
                )
        # By run and attempt: one batch can hold two tries of a run (a stale and a new one).
        kept = {(o.run_id, o.attempt) for o in stored}
        conn.execute(
            insert(Attempt),
            [_attempt_row(owner, o, (o.run_id, o.attempt) in kept) for o in ordered],
        )
        return [o for o in ordered if (o.run_id, o.attempt) not in kept]

    return await _retry_deadlock(lambda: _transaction(engine, write))


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
                visible_runs(),
            )
            .distinct()
        )
        return sorted(names)
