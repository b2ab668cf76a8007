"""Replay: queue a batch's jobs again, as a new round, with the same request bodies.

A replay round (trigger ``replay``) has one queued run per selected job. It sends each
job's stored body unchanged (same seed, model, parameters), to the job's endpoint,
unless the round overrides them:

* ``endpoint``: the requests go to that endpoint instead (the body is unchanged);
* ``model``: the body's ``model`` is replaced, nothing else; the hash of the body that
  is sent is stored in ``runs.request_hash`` (it differs from ``jobs.request_hash``);
* ``samples``: the body's ``n`` (samples per run) is set, nothing else; hashed likewise.

The overrides are recorded on the round and applied when a worker claims a run.
``reuse`` copies stored successful results of the same request (same body hash, same
endpoint) instead of sending it again; it is never on unless asked for.

Selecting and queueing happen in one transaction: an error leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.config import Settings
from runner.db import queue
from runner.db.models import Batch, Job, Round, Run, RunState
from runner.db.types import utcnow
from runner.errors import ConfigError, NotFoundError, RunnerError
from runner.params import MAX_SAMPLES
from runner.report import resolve_batch

CHUNK = 2000
# Runs that produced a result (a cancelled run did not).
FINISHED = (RunState.SUCCEEDED.value, RunState.FAILED.value)


@dataclass(frozen=True)
class Selection:
    """Which jobs of a batch to replay: all of them, or those named, then filtered."""

    keys: tuple[str, ...] = ()  # job keys (--job)
    run_ids: tuple[int, ...] = ()  # the jobs of these runs (--run)
    only_failed: bool = False  # jobs whose latest finished run failed
    only_changed: bool = False  # jobs whose last two finished runs differ

    def describe(self) -> str:
        """What ``rounds.selection`` records: ``all``, or the parts that narrowed it."""
        parts = [
            name
            for name, on in (
                ("jobs", bool(self.keys or self.run_ids)),
                ("only-failed", self.only_failed),
                ("only-changed", self.only_changed),
            )
            if on
        ]
        return ",".join(parts) or "all"


@dataclass(frozen=True)
class Replayed:
    batch_id: int
    batch_name: str
    round_id: int
    round_number: int
    queued: int  # runs waiting for a worker
    reused: int  # runs that took a stored result (--reuse)
    endpoint: str | None
    model: str | None
    selection: str
    samples: int | None = None
    via: str = "sync"


async def replay(
    engine: AsyncEngine,
    settings: Settings,
    batch_ref: str,
    selection: Selection = Selection(),
    *,
    endpoint: str | None = None,
    model: str | None = None,
    samples: int | None = None,
    reuse: bool = False,
    now: datetime | None = None,
    via: str | None = None,
) -> Replayed:
    """Queue a new replay round of ``batch_ref`` (id or name); all of it or nothing."""
    check_overrides(settings, endpoint, model, samples)
    async with engine.begin() as conn:
        batch = await resolve_batch(conn, batch_ref)
        return await queue_replay(
            conn,
            settings,
            batch,
            selection,
            endpoint=endpoint,
            model=model,
            samples=samples,
            reuse=reuse,
            now=now or utcnow(),
            via=via,
        )


def check_overrides(
    settings: Settings, endpoint: str | None, model: str | None, samples: int | None = None
) -> None:
    """Refuse an unknown endpoint, an empty model or a bad sample count before anything
    is written."""
    if endpoint is not None:
        settings.endpoint(endpoint, option="--endpoint")
    if model is not None and not model.strip():
        raise RunnerError("--model must name a model")
    if samples is not None and not 1 <= samples <= MAX_SAMPLES:
        raise ConfigError(f"--samples must be from 1 to {MAX_SAMPLES}, got {samples}")


async def queue_replay(
    conn: AsyncConnection,
    settings: Settings,
    batch: Batch,
    selection: Selection,
    *,
    endpoint: str | None,
    model: str | None,
    reuse: bool,
    now: datetime,
    samples: int | None = None,
    label: str | None = None,
    via: str | None = None,
) -> Replayed:
    """Inside the caller's transaction: one replay round of the selected jobs.

    ``label`` replaces the recorded selection (``verify`` rounds say so). ``via``: how its
    requests travel [default: the ``mode`` of the endpoint they go to].
    """
    job_ids = await select_jobs(conn, batch, selection)
    if not job_ids:
        raise RunnerError(
            f"nothing to replay in batch {batch.name!r}: no job is "
            f"{_wanted(selection)}; see `runner status {batch.id}`"
        )
    described = label or selection.describe()
    target = endpoint or await queue.batch_endpoint(conn, batch.id)
    configured = settings.endpoints.get(target) if target else None
    via = via or (configured.mode if configured else "sync")
    round_id, number = await queue.create_replay_round(
        conn,
        batch.id,
        now=now,
        endpoint=endpoint,
        model=model,
        samples=samples,
        selection=described,
        reuse=reuse,
        via=via,
    )
    attempts = await queue.tries_per_run(conn, batch.id) or settings.worker.max_attempts
    for start in range(0, len(job_ids), CHUNK):
        runs = await queue.sent_hashes(conn, job_ids[start : start + CHUNK], model, samples)
        await queue.enqueue_jobs(conn, round_id, runs, max_attempts=attempts, now=now)
    reused = await queue.reuse_results(conn, round_id, now) if reuse else 0
    return Replayed(
        batch_id=batch.id,
        batch_name=batch.name,
        round_id=round_id,
        round_number=number,
        queued=len(job_ids) - reused,
        reused=reused,
        endpoint=endpoint,
        model=model,
        selection=described,
        samples=samples,
        via=via,
    )


async def reuse_for_round(engine: AsyncEngine, round_id: int, now: datetime | None = None) -> int:
    """``runner run --reuse``: let a just-submitted round take stored results."""
    async with engine.begin() as conn:
        return await queue.reuse_results(conn, round_id, now or utcnow())


def _wanted(selection: Selection) -> str:
    wanted = [
        text
        for text, on in (
            ("failed in its latest finished run", selection.only_failed),
            ("changed between its last two finished runs", selection.only_changed),
        )
        if on
    ]
    return " and ".join(wanted) or "selected"


async def select_jobs(conn: AsyncConnection, batch: Batch, selection: Selection) -> list[int]:
    """The ids of the selected jobs of ``batch``, ascending."""
    if selection.keys or selection.run_ids:
        chosen = await _named_jobs(conn, batch, selection)
    else:
        chosen = set((await conn.execute(select(Job.id).where(Job.batch_id == batch.id))).scalars())
    if selection.only_failed or selection.only_changed:
        latest = await _latest_finished(conn, batch.id)
        if selection.only_failed:
            chosen &= {job for job, runs in latest.items() if runs[0][1] == RunState.FAILED}
        if selection.only_changed:
            chosen &= await _changed(conn, latest)
    return sorted(chosen)


async def _named_jobs(conn: AsyncConnection, batch: Batch, selection: Selection) -> set[int]:
    chosen: set[int] = set()
    if selection.keys:
        found = dict(
            (
                await conn.execute(
                    select(Job.key, Job.id).where(
                        Job.batch_id == batch.id, Job.key.in_(set(selection.keys))
                    )
                )
            ).all()
        )
        for key in selection.keys:
            if key not in found:
                raise NotFoundError(
                    f"no job {key!r} in batch {batch.name!r} (id {batch.id}); "
                    f"keys are listed by `runner status {batch.id}` and in the jobs table"
                )
        chosen.update(found.values())
    if selection.run_ids:
        found_runs = dict(
            (
                await conn.execute(
                    select(Run.id, Run.job_id)
                    .join(Job, Job.id == Run.job_id)
                    .where(Run.id.in_(set(selection.run_ids)), Job.batch_id == batch.id)
                )
            ).all()
        )
        for run_id in selection.run_ids:
            if run_id not in found_runs:
                raise NotFoundError(f"no run {run_id} in batch {batch.name!r} (id {batch.id})")
        chosen.update(found_runs.values())
    return chosen


async def _latest_finished(
    conn: AsyncConnection, batch_id: int
) -> dict[int, list[tuple[int, str]]]:
    """Per job: its last two finished runs as (run id, state), newest first."""
    rows = await conn.execute(
        select(Run.job_id, Run.id, Run.state)
        .join(Round, Round.id == Run.round_id)
        .where(Round.batch_id == batch_id, Run.state.in_(FINISHED))
        .order_by(Run.job_id, Round.number.desc())
    )
    latest: dict[int, list[tuple[int, str]]] = {}
    for job_id, run_id, state in rows:
        runs = latest.setdefault(job_id, [])
        if len(runs) < 2:
            runs.append((run_id, state))
    return latest


async def _changed(conn: AsyncConnection, latest: dict[int, list[tuple[int, str]]]) -> set[int]:
    """Jobs whose last two finished runs differ in state or in outputs."""
    pairs = {job: runs for job, runs in latest.items() if len(runs) == 2}
    run_ids = sorted(run_id for runs in pairs.values() for run_id, _ in runs)
    outputs: dict[int, str | None] = {}
    for start in range(0, len(run_ids), CHUNK):
        chunk = run_ids[start : start + CHUNK]
        outputs.update(
            (await conn.execute(select(Run.id, Run.outputs).where(Run.id.in_(chunk)))).all()
        )
    return {
        job
        for job, ((new, new_state), (old, old_state)) in pairs.items()
        if new_state != old_state or outputs[new] != outputs[old]
    }
