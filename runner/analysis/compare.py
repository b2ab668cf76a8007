"""Compare: two finished rounds, job by job, and what changed between them.

Rounds of one batch are matched by job; rounds of two batches by job key. Per job:
exact match (every choice identical), similarity and first divergence of the first
choice, same fingerprint?, same returned model?, token deltas, failed on one side.
The summary splits the jobs that succeeded on both sides by fingerprint: ``same``,
``changed`` (expect other outputs: the backend changed) and ``unknown`` (an endpoint
returned ``system_fingerprint: null``). Every comparison is stored in ``comparisons``
and ``comparison_items``, in one transaction once everything is measured.

The measuring (``compare_pair``, ``summarize``) is pure; ``compare`` does the I/O.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.analysis.distribution import (
    DEFAULT_ALPHA,
    DistributionTest,
    check_alpha,
    distribution_test,
)
from runner.analysis.embedding import DEFAULT_MODEL, embedding_distances
from runner.analysis.similarity import divergence_offset, similarity
from runner.config import Settings
from runner.db import queue
from runner.db.models import Batch, FingerprintGroup, Job, Round, Run, RunState
from runner.db.types import utcnow
from runner.errors import NotFoundError, RunnerError
from runner.kinds.vectors import cosine_similarity
from runner.report import resolve_batch

UNFINISHED = (RunState.QUEUED.value, RunState.RUNNING.value)


# ---------------------------------------------------------------- pure measures


@dataclass(frozen=True)
class Result:
    """One run as compare sees it."""

    run_id: int
    job_id: int
    key: str
    state: str
    output: str | None = None
    outputs: tuple[str | None, ...] = ()
    fingerprint: str | None = None
    response_model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    sent_hash: str = ""
    sent_endpoint: str = ""
    error_type: str | None = None
    error_message: str | None = None
    latency_ms: float | None = None
    api: str = "chat"  # the job's request kind
    response_status: str | None = None  # responses: completed, incomplete, ...
    embedding: bytes | None = None  # embeddings: the vectors (runner.kinds.vectors)
    embedding_dimensions: int = 0
    schema_valid: bool | None = None  # a JSON schema asked: do its outputs follow it?
    tool_calls: str | None = None  # canonical [{"name", "arguments"}] (runner.endpoints.kinds)

    @property
    def incomplete(self) -> bool:
        """A response cut short (``max_output_tokens``): its text is not a whole answer."""
        return self.ok and self.response_status == "incomplete"

    @property
    def ok(self) -> bool:
        return self.state == RunState.SUCCEEDED

    @property
    def text(self) -> str:
        """What similarity reads: the output, else the tool calls (name + arguments)."""
        return self.output or self.tool_calls or ""


@dataclass(frozen=True)
class Item:
    """One job of a comparison: its run in round A and in round B, and how they differ."""

    key: str
    a: Result
    b: Result
    same_request: bool  # identical request body hashes
    exact_match: bool  # both succeeded with identical outputs (every choice)
    similarity: float | None  # of the first choice; None unless both succeeded
    divergence_offset: int | None  # first differing character; None if identical or failed
    fingerprint: FingerprintGroup | None  # None unless both succeeded
    same_model: bool | None  # same returned model; None unless both succeeded
    prompt_tokens_delta: int | None  # B - A
    completion_tokens_delta: int | None  # B - A
    embedding_distance: float | None = None

    @property
    def failed_one_side(self) -> bool:
        return self.a.ok != self.b.ok


def fingerprint_group(a: str | None, b: str | None) -> FingerprintGroup:
    if a is None or b is None:
        return FingerprintGroup.UNKNOWN
    return FingerprintGroup.SAME if a == b else FingerprintGroup.CHANGED


def _delta(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


def compare_pair(a: Result, b: Result) -> Item:
    """How the runs of one job in two rounds differ."""
    same_request = a.sent_hash == b.sent_hash
    if not (a.ok and b.ok):
        return Item(a.key, a, b, same_request, False, None, None, None, None, None, None)
    vectors = a.embedding is not None and b.embedding is not None
    return Item(
        key=a.key,
        a=a,
        b=b,
        same_request=same_request,
        # Embeddings: the same float32 bytes, and the mean cosine similarity of the vectors.
        exact_match=(
            a.embedding == b.embedding
            if vectors
            else (a.outputs, a.tool_calls) == (b.outputs, b.tool_calls)
        ),
        similarity=_vector_likeness(a, b) if vectors else similarity(a.text, b.text),
        divergence_offset=None if vectors else divergence_offset(a.text, b.text),
        fingerprint=fingerprint_group(a.fingerprint, b.fingerprint),
        same_model=a.response_model == b.response_model,
        prompt_tokens_delta=_delta(a.prompt_tokens, b.prompt_tokens),
        completion_tokens_delta=_delta(a.completion_tokens, b.completion_tokens),
    )


def _vector_likeness(a: Result, b: Result) -> float | None:
    if a.embedding is None or b.embedding is None:
        return None
    if a.embedding_dimensions != b.embedding_dimensions:
        return None
    return cosine_similarity(a.embedding, b.embedding, a.embedding_dimensions)


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@dataclass(frozen=True)
class Stats:
    """Exact matches and similarity over a set of compared jobs."""

    jobs: int
    exact: int
    mean_similarity: float | None
    min_similarity: float | None
    mean_embedding_distance: float | None

    @property
    def exact_rate(self) -> float | None:
        return self.exact / self.jobs if self.jobs else None


def stats(items: Sequence[Item]) -> Stats:
    scores = [i.similarity for i in items if i.similarity is not None]
    distances = [i.embedding_distance for i in items if i.embedding_distance is not None]
    return Stats(
        jobs=len(items),
        exact=sum(i.exact_match for i in items),
        mean_similarity=_mean(scores),
        min_similarity=min(scores) if scores else None,
        mean_embedding_distance=_mean(distances),
    )


@dataclass(frozen=True)
class Summary:
    matched: int  # job keys in both rounds
    only_a: int  # keys only in round A
    only_b: int
    overall: Stats  # over every matched job: a failure on either side is not a match
    by_fingerprint: dict[FingerprintGroup, Stats]  # jobs that succeeded on both sides
    failed_a: int  # matched jobs whose run in A did not succeed
    failed_b: int
    failed_one_side: int
    different_requests: int  # matched jobs whose request bodies differ (a --model override)
    fingerprints_a: dict[str, int]  # fingerprint ("null" for none) -> runs, succeeded in A
    fingerprints_b: dict[str, int]
    kinds: dict[str, int] = field(default_factory=dict)  # request kind -> matched jobs
    incomplete_a: int = 0  # succeeded responses cut short (status incomplete) in A
    incomplete_b: int = 0
    # (valid, checked): succeeded runs with a JSON schema, and those that follow it, in A
    schema_a: tuple[int, int] = (0, 0)
    schema_b: tuple[int, int] = (0, 0)

    @property
    def exact_match_rate(self) -> float:
        return self.overall.exact_rate or 0.0


def summarize(items: Sequence[Item], *, only_a: int = 0, only_b: int = 0) -> Summary:
    def prints(results: Sequence[Result]) -> dict[str, int]:
        counts = Counter(r.fingerprint or "null" for r in results if r.ok)
        return dict(sorted(counts.items()))

    return Summary(
        matched=len(items),
        only_a=only_a,
        only_b=only_b,
        overall=stats(items),
        by_fingerprint={
            group: stats([i for i in items if i.fingerprint is group]) for group in FingerprintGroup
        },
        failed_a=sum(not i.a.ok for i in items),
        failed_b=sum(not i.b.ok for i in items),
        failed_one_side=sum(i.failed_one_side for i in items),
        different_requests=sum(not i.same_request for i in items),
        fingerprints_a=prints([i.a for i in items]),
        fingerprints_b=prints([i.b for i in items]),
        kinds=dict(sorted(Counter(i.a.api for i in items).items())),
        incomplete_a=sum(i.a.incomplete for i in items),
        incomplete_b=sum(i.b.incomplete for i in items),
        schema_a=_schema_counts([i.a for i in items]),
        schema_b=_schema_counts([i.b for i in items]),
    )


def _schema_counts(results: Sequence[Result]) -> tuple[int, int]:
    checked = [r.schema_valid for r in results if r.ok and r.schema_valid is not None]
    return sum(checked), len(checked)


def changed_most(items: Sequence[Item], limit: int) -> list[Item]:
    """Jobs that are not exact matches, most changed first: failures, then lowest similarity."""
    changed = [i for i in items if not i.exact_match]
    changed.sort(key=lambda i: (i.similarity if i.similarity is not None else -1.0, i.key))
    return changed[:limit]


# ---------------------------------------------------------------- loading rounds


@dataclass(frozen=True)
class RoundRef:
    """One side of a comparison."""

    batch_id: int
    batch_name: str
    round_id: int
    number: int
    trigger: str
    endpoint: str | None  # the round's overrides
    model: str | None


@dataclass(frozen=True)
class EmbeddingOptions:
    endpoint: str | None = None  # None: the endpoint round A's runs went to
    model: str = DEFAULT_MODEL


@dataclass(frozen=True)
class ComparisonReport:
    id: int
    created_at: datetime
    a: RoundRef
    b: RoundRef
    summary: Summary
    items: list[Item]
    changed_most: list[Item]
    embeddings_endpoint: str | None = None
    embeddings_model: str | None = None
    distribution: DistributionTest | None = None


async def _rounds(conn: AsyncConnection, batch: Batch) -> list[Any]:
    """The batch's rounds, newest first, each with its count of unfinished runs."""
    unfinished = (
        select(func.count())
        .where(Run.round_id == Round.id, Run.state.in_(UNFINISHED))
        .scalar_subquery()
    )
    return list(
        await conn.execute(
            select(Round, unfinished.label("unfinished"))
            .where(Round.batch_id == batch.id)
            .order_by(Round.number.desc())
        )
    )


def _ref(batch: Batch, row: Any) -> RoundRef:
    return RoundRef(batch.id, batch.name, row.id, row.number, row.trigger, row.endpoint, row.model)


def _numbered(batch: Batch, rounds: list[Any], number: int) -> RoundRef:
    for row in rounds:
        if row.number == number:
            if row.unfinished:
                raise RunnerError(
                    f"round {number} of batch {batch.name!r} is not finished "
                    f"({row.unfinished} runs queued or running); work it first: "
                    "`runner work --burst`"
                )
            return _ref(batch, row)
    have = ", ".join(str(r.number) for r in reversed(rounds)) or "none"
    raise NotFoundError(
        f"batch {batch.name!r} (id {batch.id}) has no round {number} (rounds: {have})"
    )


def _finished(batch: Batch, rounds: list[Any], count: int) -> list[RoundRef]:
    """The latest ``count`` finished rounds, oldest first."""
    done = [_ref(batch, r) for r in rounds if not r.unfinished][:count]
    if len(done) < count:
        pending = [str(r.number) for r in rounds if r.unfinished]
        hint = (
            f"; round {', '.join(pending)} is not finished yet: `runner work --burst`"
            if pending
            else f"; replay it with `runner replay {batch.id} --work`"
        )
        raise RunnerError(
            f"batch {batch.name!r} (id {batch.id}) has {len(done)} finished round(s), "
            f"compare needs {count}{hint}"
        )
    return list(reversed(done))


async def resolve_sides(
    conn: AsyncConnection,
    batch_ref: str,
    other_ref: str | None = None,
    numbers: tuple[int, int] | None = None,
) -> tuple[RoundRef, RoundRef]:
    """Which two rounds to compare: see ``runner compare --help``."""
    batch = await resolve_batch(conn, batch_ref)
    other = await resolve_batch(conn, other_ref) if other_ref is not None else batch
    rounds = await _rounds(conn, batch)
    other_rounds = rounds if other.id == batch.id else await _rounds(conn, other)
    if numbers is not None:
        a = _numbered(batch, rounds, numbers[0])
        b = _numbered(other, other_rounds, numbers[1])
    elif other.id == batch.id:
        a, b = _finished(batch, rounds, 2)
    else:
        (a,) = _finished(batch, rounds, 1)
        (b,) = _finished(other, other_rounds, 1)
    if a.round_id == b.round_id:
        raise RunnerError(f"both sides are round {a.number} of batch {a.batch_name!r}: "
                          "compare two different rounds (--rounds A B)")  # fmt: skip
    return a, b


async def load_round(
    conn: AsyncConnection, round_id: int, key: str | None = None
) -> dict[str, Result]:
    """Every run of a round (or the run of job ``key`` only), by job key."""
    query = (
        select(
            Run.id,
            Run.job_id,
            Job.key,
            Run.state,
            Run.output,
            Run.outputs,
            Run.system_fingerprint,
            Run.response_model,
            Run.prompt_tokens,
            Run.completion_tokens,
            queue.sent_hash().label("sent_hash"),
            queue.sent_endpoint().label("sent_endpoint"),
            Run.error_type,
            Run.error_message,
            Run.latency_ms,
            Job.api,
            Run.response_status,
            Run.embedding,
            Run.embedding_dimensions,
            Run.schema_valid,
            Run.tool_calls,
        )
        .join(Job, Job.id == Run.job_id)
        .join(Round, Round.id == Run.round_id)
        .where(Run.round_id == round_id)
    )
    if key is not None:
        query = query.where(Job.key == key)
    rows = await conn.execute(query)
    return {
        row.key: Result(
            run_id=row.id,
            job_id=row.job_id,
            key=row.key,
            state=row.state,
            output=row.output,
            outputs=tuple(json.loads(row.outputs)) if row.outputs else (),
            fingerprint=row.system_fingerprint,
            response_model=row.response_model,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            sent_hash=row.sent_hash,
            sent_endpoint=row.sent_endpoint,
            error_type=row.error_type,
            error_message=row.error_message,
            latency_ms=row.latency_ms,
            api=row.api,
            response_status=row.response_status,
            embedding=row.embedding,
            embedding_dimensions=row.embedding_dimensions or 0,
            schema_valid=row.schema_valid,
            tool_calls=row.tool_calls,
        )
        for row in rows
    }


# ---------------------------------------------------------------- compare


def _row(item: Item) -> dict[str, Any]:
    return {
        "key": item.key,
        "run_a_id": item.a.run_id,
        "run_b_id": item.b.run_id,
        "state_a": item.a.state,
        "state_b": item.b.state,
        "same_request": item.same_request,
        "exact_match": item.exact_match,
        "similarity": item.similarity,
        "divergence_offset": item.divergence_offset,
        "fingerprint": item.fingerprint.value if item.fingerprint else None,
        "same_model": item.same_model,
        "prompt_tokens_delta": item.prompt_tokens_delta,
        "completion_tokens_delta": item.completion_tokens_delta,
        "embedding_distance": item.embedding_distance,
    }


def _summary_row(summary: Summary) -> dict[str, Any]:
    groups = summary.by_fingerprint
    return {
        "matched": summary.matched,
        "only_a": summary.only_a,
        "only_b": summary.only_b,
        "exact_matches": summary.overall.exact,
        "exact_match_rate": summary.exact_match_rate,
        "mean_similarity": summary.overall.mean_similarity,
        "min_similarity": summary.overall.min_similarity,
        "failed_a": summary.failed_a,
        "failed_b": summary.failed_b,
        "fingerprint_same": groups[FingerprintGroup.SAME].jobs,
        "fingerprint_changed": groups[FingerprintGroup.CHANGED].jobs,
        "fingerprint_unknown": groups[FingerprintGroup.UNKNOWN].jobs,
        "mean_embedding_distance": summary.overall.mean_embedding_distance,
    }


async def _with_embeddings(
    settings: Settings, items: list[Item], options: EmbeddingOptions
) -> tuple[list[Item], str]:
    name = options.endpoint
    option = "--embeddings-endpoint" if name is not None else None
    if name is None:
        used = sorted({i.a.sent_endpoint for i in items})
        if len(used) != 1:
            raise RunnerError(
                f"round A's runs went to several endpoints ({', '.join(used)}): "
                "choose the one to embed with --embeddings-endpoint"
            )
        name = used[0]
    config = settings.endpoint(name, option=option)
    # Embeddings jobs have no text to embed: their vectors are compared as they are.
    pairs = [
        (i.a.text, i.b.text) if i.a.ok and i.b.ok and i.a.api != "embeddings" else None
        for i in items
    ]
    distances = await embedding_distances(config, options.model, pairs)
    return [replace(i, embedding_distance=d) for i, d in zip(items, distances, strict=True)], name


async def compare(
    engine: AsyncEngine,
    settings: Settings,
    batch_ref: str,
    other_ref: str | None = None,
    *,
    rounds: tuple[int, int] | None = None,
    embeddings: EmbeddingOptions | None = None,
    top: int = 5,
    alpha: float = DEFAULT_ALPHA,
    now: datetime | None = None,
) -> ComparisonReport:
    """Compare two finished rounds, store the comparison, and return the report."""
    check_alpha(alpha)
    async with engine.connect() as conn:
        a, b = await resolve_sides(conn, batch_ref, other_ref, rounds)
        side_a = await load_round(conn, a.round_id)
        side_b = await load_round(conn, b.round_id)
    keys = sorted(side_a.keys() & side_b.keys())
    if not keys:
        raise RunnerError(
            f"round {a.number} of batch {a.batch_name!r} and round {b.number} of batch "
            f"{b.batch_name!r} have no job key in common: nothing to compare"
        )
    items = [compare_pair(side_a[k], side_b[k]) for k in keys]
    embeddings_endpoint = None
    if embeddings is not None:
        items, embeddings_endpoint = await _with_embeddings(settings, items, embeddings)
    summary = summarize(items, only_a=len(side_a) - len(keys), only_b=len(side_b) - len(keys))
    tested = distribution_test(samples(items), alpha)
    columns, rows = stored_rows(summary, items, tested)
    created_at = now or utcnow()
    async with engine.begin() as conn:
        comparison_id = await queue.insert_comparison(
            conn,
            {
                "created_at": created_at,
                "batch_a_id": a.batch_id,
                "round_a_id": a.round_id,
                "batch_b_id": b.batch_id,
                "round_b_id": b.round_id,
                "embeddings_endpoint": embeddings_endpoint,
                "embeddings_model": embeddings.model if embeddings else None,
                **columns,
            },
            rows,
        )
    return ComparisonReport(
        id=comparison_id,
        created_at=created_at,
        a=a,
        b=b,
        summary=summary,
        items=items,
        changed_most=changed_most(items, top),
        embeddings_endpoint=embeddings_endpoint,
        embeddings_model=embeddings.model if embeddings else None,
        distribution=tested,
    )


def samples(items: Sequence[Item]) -> dict[str, tuple[Sequence[str | None], Sequence[str | None]]]:
    """Every sample of the jobs that succeeded on both sides, for the distribution test."""
    return {i.key: (i.a.outputs, i.b.outputs) for i in items if i.a.ok and i.b.ok}


def stored_rows(
    summary: Summary, items: Sequence[Item], tested: DistributionTest
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What ``compare`` stores for a measured pair of rounds: the ``comparisons`` columns
    of the summary and the distribution test (sides, date and embeddings left to the
    caller) and one ``comparison_items`` row per job. Drift reports store theirs with it."""
    return (
        {**_summary_row(summary), **tested.columns()},
        [{**_row(i), **tested.item_columns(i.key)} for i in items],
    )
