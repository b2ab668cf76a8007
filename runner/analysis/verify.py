"""Verify: run every job K times with identical bodies and report how deterministic it is.

``runner verify JOBFILE --times K`` submits the file (round 1) and queues K-1 replay
rounds; ``runner verify BATCH --times K`` queues K replay rounds of an existing batch.
A worker runs them, then the report says, per job and per endpoint / model /
fingerprint / seeded-or-not group:

* unique outputs out of K (1: every run gave the same text);
* TARr@K, the total agreement rate on raw outputs: the job's K outputs are all
  byte-identical (and all K runs succeeded);
* the mean pairwise similarity of the K outputs (normalised edit distance);
* the job's own noise on its endpoint, over every sample (all choices of all K runs:
  ``--samples`` asks each run for several): how many distinct texts, where they first
  diverge (the index of the first word, counted on whitespace, at which they are not all
  the same: a remote model's tokenizer is unknown), and whether the endpoint honoured
  ``n`` (``runs.n_honoured``). That noise is what the drift test is calibrated against.

The rounds stay in the database like any other: ``runner compare`` and ``runner diff``
read them too.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.analysis.similarity import mean_pairwise_similarity
from runner.config import Settings
from runner.db import queue
from runner.db.models import Job, Round, Run, RunState
from runner.db.types import utcnow
from runner.errors import ConfigError
from runner.replay import Selection, check_overrides, queue_replay
from runner.report import resolve_batch
from runner.submit import submit
from runner.work import Worker

JOB_FILE_SUFFIXES = (".yaml", ".yml", ".jsonl")


@dataclass(frozen=True)
class JobVerdict:
    """One job's K runs."""

    key: str
    endpoint: str
    model: str  # the model asked for
    seed: int | None
    fingerprints: tuple[str, ...]  # distinct system_fingerprints seen ("null": none returned)
    runs: int  # K
    succeeded: int
    unique_outputs: int  # distinct outputs among the runs that succeeded
    tarr: bool  # all K runs succeeded with byte-identical outputs
    mean_similarity: float | None  # over every pair of outputs; None for fewer than two
    samples: int = 0  # completions over the successful runs (K x samples per run)
    distinct_samples: int = 0  # distinct texts among them
    diverges_at: int | None = None  # the first word at which they differ; None: identical
    n_honoured: bool | None = None  # several samples per run: all in one response? (any not)


@dataclass(frozen=True)
class GroupVerdict:
    """The jobs of one endpoint / model / fingerprint(s) / seeded-or-not."""

    endpoint: str
    model: str
    fingerprint: str  # the fingerprints its jobs saw, joined by "+"
    seeded: bool
    jobs: int
    tarr: int  # jobs with total agreement
    mean_unique: float  # mean of unique outputs per job
    mean_similarity: float | None

    @property
    def tarr_rate(self) -> float:
        return self.tarr / self.jobs


@dataclass(frozen=True)
class VerifyReport:
    batch_id: int
    batch_name: str
    times: int
    round_numbers: list[int]
    jobs: list[JobVerdict]
    groups: list[GroupVerdict]
    failed_runs: int
    unfinished_runs: int  # the worker was stopped before all K runs of every job ended


def is_job_file(target: str) -> bool:
    """A path to a job file (existing or not, by its suffix), rather than a batch id/name."""
    path = Path(target)
    return path.suffix.lower() in JOB_FILE_SUFFIXES or path.is_file()


async def prepare(
    engine: AsyncEngine,
    settings: Settings,
    target: str,
    *,
    times: int,
    endpoint: str | None = None,
    samples: int | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Queue K runs of every job of ``target`` (a job file or a batch); returns the rounds.

    ``samples``: each run asks for that many samples (``rounds.samples``); a batch only:
    a job file says it itself (``samples: K``), since its first round is its submit's.
    """
    if times < 2:
        raise ValueError("verify needs at least two runs per job")
    if samples is not None and is_job_file(target):
        raise ConfigError(
            f"--samples applies to a batch: write samples: {samples} in {target}, "
            "or verify the submitted batch with --samples"
        )
    now = now or utcnow()
    round_ids: list[int] = []
    if is_job_file(target):
        # A batch of its own, even for a file run before: K fresh runs of every job.
        sub = await submit(engine, Path(target), settings, endpoint=endpoint, now=now, again=True)
        round_ids.append(sub.round_id)
        batch_ref, override = str(sub.batch_id), None
    else:
        check_overrides(settings, endpoint, None, samples)
        batch_ref, override = target, endpoint
    async with engine.begin() as conn:
        batch = await resolve_batch(conn, batch_ref)
        for _ in range(times - len(round_ids)):
            replayed = await queue_replay(
                conn,
                settings,
                batch,
                Selection(),
                endpoint=override,
                model=None,
                reuse=False,
                now=now,
                samples=samples,
                label="verify",
            )
            round_ids.append(replayed.round_id)
    return round_ids


async def verify(
    engine: AsyncEngine,
    settings: Settings,
    target: str,
    *,
    times: int,
    endpoint: str | None = None,
    samples: int | None = None,
    concurrency: int | None = None,
    handle_signals: bool = False,
) -> VerifyReport:
    """Queue, work and report: the whole of ``runner verify``."""
    round_ids = await prepare(
        engine, settings, target, times=times, endpoint=endpoint, samples=samples
    )
    worker = Worker(
        engine,
        settings,
        concurrency=concurrency,
        burst=True,
        round_ids=round_ids,
        handle_signals=handle_signals,
    )
    await worker.run()
    async with engine.connect() as conn:
        return await report(conn, round_ids)


# ---------------------------------------------------------------- the report


def first_divergence(texts: Sequence[str]) -> int | None:
    """The index of the first whitespace-separated word at which ``texts`` are not all the
    same (the shortest one's length when one is a prefix of the others); None when they
    are byte-identical (or fewer than two)."""
    if len(set(texts)) <= 1:
        return None
    words = [text.split() for text in texts]
    shortest = min(len(w) for w in words)
    for index in range(shortest):
        if len({w[index] for w in words}) > 1:
            return index
    return shortest


def _honoured(runs: Sequence[Any]) -> bool | None:
    said = [r.n_honoured for r in runs if r.n_honoured is not None]
    return None if not said else all(said)


def judge(key: str, runs: Sequence[Any], times: int) -> JobVerdict:
    """The verdict on one job from its runs (rows with state, output(s), fingerprint)."""
    ok = [r for r in runs if r.state == RunState.SUCCEEDED]
    # What a run gave: its texts, its tool calls, an embeddings run's vector bytes.
    outputs = {(r.outputs, r.tool_calls, r.embedding) for r in ok}
    vectors = any(r.embedding is not None for r in ok)
    samples = [text or "" for r in ok for text in json.loads(r.outputs or "[]")]
    first = runs[0]
    return JobVerdict(
        key=key,
        endpoint=first.sent_endpoint,
        model=first.sent_model,
        seed=first.seed,
        fingerprints=tuple(sorted({r.system_fingerprint or "null" for r in ok})),
        runs=times,
        succeeded=len(ok),
        unique_outputs=len(outputs),
        tarr=len(ok) == times and len(outputs) == 1,
        mean_similarity=(
            None if vectors else mean_pairwise_similarity([r.output or "" for r in ok])
        ),
        samples=len(samples),
        distinct_samples=len(set(samples)),
        diverges_at=first_divergence(samples),
        n_honoured=_honoured(ok),
    )


def group(verdicts: Sequence[JobVerdict]) -> list[GroupVerdict]:
    groups: dict[tuple[str, str, str, bool], list[JobVerdict]] = defaultdict(list)
    for v in verdicts:
        fingerprint = "+".join(v.fingerprints) or "-"
        groups[(v.endpoint, v.model, fingerprint, v.seed is not None)].append(v)
    result = []
    for (endpoint, model, fingerprint, seeded), members in sorted(groups.items()):
        scores = [m.mean_similarity for m in members if m.mean_similarity is not None]
        result.append(
            GroupVerdict(
                endpoint=endpoint,
                model=model,
                fingerprint=fingerprint,
                seeded=seeded,
                jobs=len(members),
                tarr=sum(m.tarr for m in members),
                mean_unique=sum(m.unique_outputs for m in members) / len(members),
                mean_similarity=sum(scores) / len(scores) if scores else None,
            )
        )
    return result


async def report(conn: AsyncConnection, round_ids: Sequence[int]) -> VerifyReport:
    """The determinism report over ``round_ids`` (the K rounds of one batch)."""
    rounds = list(
        await conn.execute(
            select(Round.batch_id, Round.number).where(Round.id.in_(list(round_ids)))
        )
    )
    batch = await resolve_batch(conn, str(rounds[0].batch_id))
    rows = await conn.execute(
        select(
            Run.job_id,
            Job.key,
            Job.seed,
            Run.state,
            Run.output,
            Run.outputs,
            Run.n_honoured,
            Run.system_fingerprint,
            Run.tool_calls,
            Run.embedding,
            queue.sent_endpoint().label("sent_endpoint"),
            func.coalesce(Round.model, Job.model).label("sent_model"),
        )
        .join(Job, Job.id == Run.job_id)
        .join(Round, Round.id == Run.round_id)
        .where(Run.round_id.in_(list(round_ids)))
        .order_by(Job.key, Round.number)
    )
    by_job: dict[str, list[Any]] = defaultdict(list)
    states: dict[str, int] = defaultdict(int)
    for row in rows:
        by_job[row.key].append(row)
        states[row.state] += 1
    times = len(round_ids)
    verdicts = [judge(key, runs, times) for key, runs in by_job.items()]
    return VerifyReport(
        batch_id=batch.id,
        batch_name=batch.name,
        times=times,
        round_numbers=sorted(r.number for r in rounds),
        jobs=verdicts,
        groups=group(verdicts),
        failed_runs=states[RunState.FAILED.value] + states[RunState.CANCELLED.value],
        unfinished_runs=states[RunState.QUEUED.value] + states[RunState.RUNNING.value],
    )
