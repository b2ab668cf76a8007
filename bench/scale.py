"""Scale: submitting a million jobs, and what a claim costs with a million queued.

1. ``runner submit`` of a 1,000,000-line OpenAI Batch file, in a subprocess: wall time
   and the child's peak RSS. Target: <= 60 s and <= 300 MB.
2. Claim cost: mean time of a 64-run claim with 1,000 runs queued and with 1,000,000
   queued (the same database after the big submit). Target: <= 2 x.

Both on SQLite by default; ``--db postgresql://...`` (an empty database, which this
script migrates) runs them on PostgreSQL.

Run: ``python bench/scale.py [--jobs 1000000] [--db URL]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RUNNER, machine, write_jobs

from runner.db import engine as db
from runner.db import queue
from runner.db.types import utcnow

CLAIMS = 50


def submit(db_url: str, jobs: Path) -> tuple[float, float]:
    env = {**os.environ, "RUNNER_DATABASE_URL": db_url}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(
        [*RUNNER, "submit", "--endpoint", "local", str(jobs)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before) / 1024


async def claim_cost(db_url: str) -> float:
    engine = db.create_engine_async(db_url)
    try:
        await queue.claim(engine, "warmup", 64, lease=timedelta(hours=1), now=utcnow())
        spent = 0.0
        for i in range(CLAIMS):
            started = time.perf_counter()
            claimed = await queue.claim(engine, f"w{i}", 64, lease=timedelta(hours=1), now=utcnow())
            spent += time.perf_counter() - started
            assert len(claimed) == 64
            # Put them back (untimed) so every claim sees the same queue size.
            await queue.release(engine, f"w{i}", [c.run_id for c in claimed], utcnow())
        return spent / CLAIMS * 1000
    finally:
        await engine.dispose()


def fresh(db_url: str | None, tmp: Path, name: str) -> str:
    if db_url is None:
        return f"sqlite:///{tmp / name}.db"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(
        make_url(db_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "bench_{name}"'))
        conn.execute(text(f'CREATE DATABASE "bench_{name}"'))
    admin.dispose()
    url = make_url(db_url).set(database=f"bench_{name}").render_as_string(hide_password=False)
    db.upgrade(url)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--db", help="an admin PostgreSQL URL (default: SQLite files)")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        big = write_jobs(root / "big.jsonl", args.jobs, max_tokens=16)
        small = write_jobs(root / "small.jsonl", 1000, max_tokens=16)
        size = big.stat().st_size / 1e6
        big_url = fresh(args.db, root, "big")
        elapsed, rss = submit(big_url, big)
        print(
            f"submit {args.jobs:,} jobs ({size:.0f} MB file): {elapsed:.1f} s, "
            f"{args.jobs / elapsed:,.0f} jobs/s, peak RSS {rss:.0f} MB"
        )
        small_url = fresh(args.db, root, "small")
        submit(small_url, small)
        few = asyncio.run(claim_cost(small_url))
        many = asyncio.run(claim_cost(big_url))
        print(
            f"claim of 64 runs: {few:.2f} ms with ~1,000 queued, {many:.2f} ms with "
            f"{args.jobs:,} queued ({many / few:.2f} x)"
        )


if __name__ == "__main__":
    main()
