"""What an HTML report shows, gathered read-only into one JSON-ready document.

Everything comes through the existing readers: ``batch_status`` (counts, errors,
tokens, fingerprints of each round), ``load_round`` (each run as compare sees it),
``compare_pair`` / ``stats`` / ``changed_most`` (each round against the round before
it in the report), the drift reports' stored statuses and p-values, and
``distribution_test`` for rounds with samples that have no drift report.

Runs are stored column-wise per round, indexed like ``jobs.keys``, with every text
(outputs, fingerprints, models, errors) once in ``strings``: a nightly batch repeats
the same outputs round after round, and 100 rounds x 1,000 jobs then stays a few MB.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.analysis.compare import (
    Result,
    changed_most,
    compare_pair,
    load_round,
    samples,
    stats,
)
from runner.analysis.distribution import distribution_test
from runner.analysis.drift import explain
from runner.config import Price
from runner.db.models import DriftReport, Job, Round, RunState, Schedule
from runner.db.types import utcnow
from runner.replay import FINISHED
from runner.report import RoundStatus, batch_status, resolve_batch

FORMAT = 1  # of the document; the page script reads it
CHANGED_MOST = 10  # jobs listed per round under "changed most"
STATES = [s.value for s in RunState]


@dataclass(frozen=True)
class RoundRange:
    """``--rounds A..B``: either end may be open."""

    first: int | None = None
    last: int | None = None

    def holds(self, number: int) -> bool:
        return (self.first is None or number >= self.first) and (
            self.last is None or number <= self.last
        )


class Strings:
    """A table of distinct texts: each is stored once and referred to by index."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, text: str | None) -> int | None:
        if text is None:
            return None
        found = self.index.get(text)
        if found is None:
            found = self.index[text] = len(self.index)
        return found

    def table(self) -> list[str]:
        return list(self.index)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _most_common(values: Sequence[str | None]) -> str | None:
    counted = Counter(v for v in values if v is not None)
    return counted.most_common(1)[0][0] if counted else None


def _percentiles(latencies: Sequence[float]) -> tuple[float | None, float | None]:
    if not latencies:
        return None, None
    import numpy as np

    p50, p95 = np.percentile(np.asarray(latencies, dtype=float), [50, 95])
    return round(float(p50), 1), round(float(p95), 1)


def _seeds(seeds: Sequence[int | None]) -> str:
    """The jobs' seeds in a few words."""
    given = sorted({s for s in seeds if s is not None})
    unseeded = sum(s is None for s in seeds)
    if not given:
        return "none (unseeded)" if seeds else "-"
    shown = ", ".join(map(str, given)) if len(given) <= 6 else f"{given[0]} … {given[-1]}"
    text = f"{len(given)} distinct: {shown}"
    return text + (f"; {unseeded} job(s) unseeded" if unseeded else "")


async def _header(conn: AsyncConnection, batch: Any, jobs: Sequence[Any]) -> dict[str, Any]:
    schedules = await conn.execute(
        select(Schedule).where(Schedule.batch_id == batch.id).order_by(Schedule.name)
    )
    return {
        "id": batch.id,
        "name": batch.name,
        "source_path": batch.source_path,
        "source_format": batch.source_format,
        "source_sha256": batch.source_sha256,
        "submitted_at": _iso(batch.submitted_at),
        "job_count": batch.job_count,
        "endpoints": sorted({j.endpoint for j in jobs}),
        "models": sorted({j.model for j in jobs}),
        "seeds": _seeds([j.seed for j in jobs]),
        "schedules": [
            {
                "name": s.name,
                "cron": s.cron,
                "timezone": s.timezone,
                "samples": s.samples,
                "alpha": s.alpha,
                "paused": s.paused_at is not None,
                "on_drift": s.on_drift,
            }
            for s in schedules
        ],
    }


def _error(run: Result) -> str | None:
    if run.error_type is None:
        return None
    return f"{run.error_type}: {run.error_message or ''}".strip()


def _columns(
    results: Mapping[str, Result], keys: Sequence[str], strings: Strings
) -> dict[str, list[Any]]:
    """One round's runs column-wise, in the order of ``keys`` (None: no run)."""
    names = ("state", "out", "samples", "fp", "model", "pt", "ct", "lat", "err")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    empty = (None,) * len(names)
    states = {state: code for code, state in enumerate(STATES)}
    for key in keys:
        r = results.get(key)
        values: tuple[Any, ...] = empty
        if r is not None:
            ok = r.state == RunState.SUCCEEDED
            values = (
                states.get(r.state),
                strings(r.output) if ok else None,
                len(r.outputs) if len(r.outputs) > 1 else None,
                strings(r.fingerprint),
                strings(r.response_model),
                r.prompt_tokens,
                r.completion_tokens,
                None if r.latency_ms is None else round(r.latency_ms),
                strings(_error(r)),
            )
        for name, value in zip(names, values, strict=True):
            columns[name].append(value)
    return columns


def _against(
    before: Mapping[str, Result] | None, after: Mapping[str, Result], drift: Any
) -> dict[str, Any]:
    """The round against the previous one in the report: exact match, similarity, test."""
    found: dict[str, Any] = {"exact_match_rate": None, "mean_similarity": None,
                             "p_value": None, "changed": []}  # fmt: skip
    if drift is not None:
        found["p_value"] = drift.p_value
    if not before:
        return found
    keys = sorted(
        k for k in before.keys() & after.keys()
        if before[k].state in FINISHED and after[k].state in FINISHED
    )  # fmt: skip
    if not keys:
        return found
    items = [compare_pair(before[k], after[k]) for k in keys]
    measured = stats(items)
    found["exact_match_rate"] = measured.exact_rate
    found["mean_similarity"] = measured.mean_similarity
    sampled = samples(items)
    if found["p_value"] is None and any(len(a) > 1 and len(b) > 1 for a, b in sampled.values()):
        found["p_value"] = distribution_test(sampled).p_value
    found["changed"] = [
        {"key": i.key, "similarity": i.similarity, "before": i.a.state, "after": i.b.state}
        for i in changed_most(items, CHANGED_MOST)
    ]
    return found


def _round(
    row: Any, status: RoundStatus, results: Mapping[str, Result], prices: Mapping[str, Price]
) -> dict[str, Any]:
    cost, unpriced = status.cost(prices)
    ok = [r for r in results.values() if r.ok]
    p50, p95 = _percentiles([r.latency_ms for r in results.values() if r.latency_ms is not None])
    return {
        "number": row.number,
        "trigger": row.trigger,
        "created_at": _iso(row.created_at),
        "scheduled_for": _iso(row.scheduled_for),
        "endpoint": row.endpoint,
        "model": row.model,
        "selection": row.selection,
        "samples": row.samples,
        "counts": status.counts,
        "total": status.total,
        "failures": status.counts.get(RunState.FAILED.value, 0),
        "errors": status.errors,
        "prompt_tokens": status.prompt_tokens,
        "completion_tokens": status.completion_tokens,
        "tokens": status.prompt_tokens + status.completion_tokens,
        "cost": cost,
        "unpriced": unpriced,
        "fingerprint": _most_common([r.fingerprint for r in ok]),
        "fingerprints": [f or "null" for f in status.fingerprints],
        "response_model": _most_common([r.response_model for r in ok]),
        "latency_p50": p50,
        "latency_p95": p95,
    }


async def gather(
    conn: AsyncConnection,
    batch_ref: str,
    *,
    rounds: RoundRange | None = None,
    prices: Mapping[str, Price] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report document of batch ``batch_ref`` (id or name) over ``rounds``."""
    batch = await resolve_batch(conn, batch_ref)
    wanted = rounds or RoundRange()
    jobs = list(
        await conn.execute(
            select(Job.key, Job.seed, Job.endpoint, Job.model)
            .where(Job.batch_id == batch.id)
            .order_by(Job.id)
        )
    )
    keys = [j.key for j in jobs]
    (status,) = await batch_status(conn, str(batch.id))
    statuses = {s.number: s for s in status.rounds if wanted.holds(s.number)}
    rows = [
        r
        for r in await conn.execute(
            select(Round).where(Round.batch_id == batch.id).order_by(Round.number)
        )
        if r.number in statuses
    ]
    drifts = {
        d.round_id: d
        for d in await conn.execute(
            select(DriftReport.round_id, DriftReport.status, DriftReport.p_value).where(
                DriftReport.batch_id == batch.id
            )
        )
    }
    strings = Strings()
    shown: list[dict[str, Any]] = []
    runs: list[dict[str, list[Any]]] = []
    before: dict[str, Result] | None = None
    previous: int | None = None
    for row in rows:
        results = await load_round(conn, row.id)
        drift = drifts.get(row.id)
        entry = _round(row, statuses[row.number], results, prices or {})
        entry.update(_against(before, results, drift))
        entry["compared_with"] = previous if before else None
        entry["drift"] = drift.status if drift is not None else None
        entry["drift_explanation"] = explain(drift.status) if drift is not None else None
        shown.append(entry)
        runs.append(_columns(results, keys, strings))
        if any(r.state in FINISHED for r in results.values()):
            before, previous = results, row.number
    return {
        "format": FORMAT,
        "generated_at": _iso(now or utcnow()),
        "batch": await _header(conn, batch, jobs),
        "states": STATES,
        "jobs": {"keys": keys, "seeds": [j.seed for j in jobs]},
        "rounds": shown,
        "runs": runs,
        "strings": strings.table(),
    }
