"""Diff: how one job's output changed between two rounds, word by word.

By default the job's last two finished runs are compared (older first); ``rounds``
names the two round numbers instead. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.analysis.compare import Result, RoundRef, load_round
from runner.analysis.similarity import DiffPiece, divergence_offset, similarity, word_diff
from runner.db.models import Batch, Job, Round, Run
from runner.errors import NotFoundError, RunnerError
from runner.replay import FINISHED
from runner.report import resolve_batch


@dataclass(frozen=True)
class JobDiff:
    key: str
    a: RoundRef
    b: RoundRef
    run_a: Result
    run_b: Result
    pieces: list[DiffPiece]  # empty unless both runs succeeded
    similarity: float | None
    divergence_offset: int | None

    @property
    def identical(self) -> bool:
        return self.run_a.ok and self.run_b.ok and self.run_a.outputs == self.run_b.outputs


def _ref(batch: Batch, row: Round) -> RoundRef:
    return RoundRef(batch.id, batch.name, row.id, row.number, row.trigger, row.endpoint, row.model)


async def _round(conn: AsyncConnection, batch: Batch, number: int) -> Round:
    row = (
        await conn.execute(select(Round).where(Round.batch_id == batch.id, Round.number == number))
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"batch {batch.name!r} (id {batch.id}) has no round {number}")
    return Round(**row._mapping)


async def _last_two(conn: AsyncConnection, batch: Batch, key: str) -> list[Round]:
    rows = await conn.execute(
        select(Round)
        .join(Run, Run.round_id == Round.id)
        .join(Job, Job.id == Run.job_id)
        .where(Job.batch_id == batch.id, Job.key == key, Run.state.in_(FINISHED))
        .order_by(Round.number.desc())
        .limit(2)
    )
    found = [Round(**row._mapping) for row in rows]
    if len(found) < 2:
        raise RunnerError(
            f"job {key!r} of batch {batch.name!r} has {len(found)} finished run(s), a diff "
            f"needs two: replay it with `runner replay {batch.id} --job {key!r} --work`"
        )
    return list(reversed(found))


async def _run(conn: AsyncConnection, batch: Batch, rnd: Round, key: str) -> Result:
    found = (await load_round(conn, rnd.id, key)).get(key)
    if found is None:
        raise NotFoundError(f"job {key!r} has no run in round {rnd.number} of batch {batch.name!r}")
    if found.state not in FINISHED:
        raise RunnerError(
            f"the run of job {key!r} in round {rnd.number} is {found.state}, not finished: "
            "work it first (`runner work --burst`)"
        )
    return found


async def diff_job(
    engine: AsyncEngine, batch_ref: str, key: str, rounds: tuple[int, int] | None = None
) -> JobDiff:
    """The word-level diff of job ``key`` of ``batch_ref`` between two rounds."""
    async with engine.connect() as conn:
        batch = await resolve_batch(conn, batch_ref)
        exists = await conn.scalar(select(Job.id).where(Job.batch_id == batch.id, Job.key == key))
        if exists is None:
            raise NotFoundError(f"no job {key!r} in batch {batch.name!r} (id {batch.id})")
        if rounds is None:
            first, second = await _last_two(conn, batch, key)
        else:
            if rounds[0] == rounds[1]:
                raise RunnerError("give two different rounds: --rounds A B")
            first, second = (
                await _round(conn, batch, rounds[0]),
                await _round(conn, batch, rounds[1]),
            )
        run_a = await _run(conn, batch, first, key)
        run_b = await _run(conn, batch, second, key)
    both = run_a.ok and run_b.ok
    return JobDiff(
        key=key,
        a=_ref(batch, first),
        b=_ref(batch, second),
        run_a=run_a,
        run_b=run_b,
        pieces=word_diff(run_a.text, run_b.text) if both else [],
        similarity=similarity(run_a.text, run_b.text) if both else None,
        divergence_offset=divergence_offset(run_a.text, run_b.text) if both else None,
    )
