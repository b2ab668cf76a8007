"""Pieces every part of the queue uses: scopes, overrides, deadlock retries."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from sqlalchemy import (
    Connection,
    exists,
    func,
    select,
    true,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import BindParameter

from runner.db.engine import InlineSQLite
from runner.db.models import (
    Batch,
    Job,
    Round,
    Run,
)
from runner.hashing import canonical_json

T = TypeVar("T")
DEADLOCK = "40P01"  # PostgreSQL's deadlock_detected


QueueEngine = AsyncEngine | InlineSQLite
"""Where the hot statements (claim, record) run: the async engine, or a worker's
inline SQLite connection (see ``InlineSQLite``)."""


async def _transaction(engine: QueueEngine, fn: Callable[[Connection], T]) -> T:
    """``fn(connection)`` in one transaction; the same statements on either kind of engine."""
    if isinstance(engine, InlineSQLite):
        return await engine.run(fn)
    async with engine.begin() as conn:
        return await conn.run_sync(fn)


async def _retry_deadlock(fn: Callable[[], Awaitable[T]], tries: int = 5) -> T:
    """Run a transaction again if PostgreSQL chose it as a deadlock victim (rolled back)."""
    for attempt in range(1, tries + 1):
        try:
            return await fn()
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != DEADLOCK or attempt == tries:
                raise
            await anyio.sleep(0.01 * attempt)
    raise AssertionError("unreachable")


def _in_rounds(round_ids: Sequence[int] | None) -> Any:
    return true() if round_ids is None else Run.round_id.in_(list(round_ids))


def visible_runs() -> Any:
    """Runs of batches a submit has finished writing (see ``Batch.pending_until``): a
    pending batch's runs are neither claimed nor waited for."""
    pending = select(Round.id).join(Batch, Batch.id == Round.batch_id)
    return Run.round_id.not_in(pending.where(Batch.pending_until.is_not(None)))


def _not_for(endpoints: Sequence[str] | BindParameter[Any]) -> Any:
    """Runs whose request does not go to one of ``endpoints`` (a worker gave up on those);
    ``endpoints`` may be an expanding bind parameter, for a statement built once."""
    if isinstance(endpoints, BindParameter):
        names: Any = endpoints
    elif endpoints:
        names = list(endpoints)
    else:
        return true()
    return ~exists().where(
        Job.id == Run.job_id, Round.id == Run.round_id, sent_endpoint().in_(names)
    )


@dataclass(frozen=True)
class SentRequest:
    """What a run of a job sends, and where, once its round's overrides are applied."""

    endpoint: str
    model: str
    body: str


def with_model(body: str, model: str) -> str:
    """The canonical ``body`` with only its ``model`` replaced (still canonical JSON)."""
    return with_changes(body, model=model)


def with_changes(body: str, *, model: str | None = None, samples: int | None = None) -> str:
    """The canonical ``body`` with its ``model`` and its number of samples (``n``) replaced,
    nothing else (still canonical JSON). One sample drops ``n`` (its default)."""
    payload = json.loads(body)
    if model is not None:
        payload["model"] = model
    if samples is not None:
        if samples == 1:
            payload.pop("n", None)
        else:
            payload["n"] = samples
    return canonical_json(payload)


def samples_asked(body: str) -> int:
    """How many samples (choices, ``n``) a canonical chat body asks for."""
    if '"n":' not in body:  # canonical JSON: a body without the key is the common case
        return 1
    n = json.loads(body).get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def sent_request(
    endpoint: str,
    model: str,
    body: str,
    *,
    endpoint_override: str | None,
    model_override: str | None,
    samples_override: int | None = None,
    api: str = "chat",
) -> SentRequest:
    """A job's endpoint, model and body with a round's overrides (None: the job's own).

    Samples (the body's ``n``) exist only in chat completions: other kinds' bodies are
    sent without a samples override."""
    if api != "chat":
        samples_override = None
    if model_override == model:
        model_override = None
    if samples_override is not None and samples_override == samples_asked(body):
        samples_override = None
    if model_override is None and samples_override is None:
        return SentRequest(endpoint_override or endpoint, model, body)
    return SentRequest(
        endpoint_override or endpoint,
        model_override or model,
        with_changes(body, model=model_override, samples=samples_override),
    )


def sent_endpoint() -> Any:
    """SQL: the endpoint a run's request goes to (its round's override, else its job's)."""
    return func.coalesce(Round.endpoint, Job.endpoint)


def sent_hash() -> Any:
    """SQL: the hash of the body a run sends (``runs.request_hash``, else its job's)."""
    return func.coalesce(Run.request_hash, Job.request_hash)


_SUCCESS_COLUMNS = (
    "response",
    "output",
    "outputs",
    "finish_reason",
    "response_model",
    "system_fingerprint",
    "provider_request_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "n_honoured",
    "response_status",
    "incomplete_details",
    "service_tier",
    "cached_tokens",
    "reasoning_tokens",
    "embedding",
    "embedding_dimensions",
    "schema_valid",
    "tool_calls",
)
