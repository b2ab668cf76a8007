"""HTML report: build time and file size of ``runner report`` for 100 rounds x 1,000 jobs.

The history is written straight into the tables with SQL inserts (working 100,000 runs
through the model would take far longer than the report): a nightly batch of 1,000 seeded
jobs whose outputs (about 40 words) stay byte-identical from night to night except that

- every ``--change-every`` rounds (10) the backend changes: a new system_fingerprint and
  a new output for every job (drift report ``fingerprint_changed``);
- each round, ``--noise`` of the jobs (2 %) return another output (``outputs_changed``);
- each round, 0.5 % of the runs fail (a rate limit or a timeout).

Then ``runner report BATCH -o FILE`` runs in a process of its own: wall and CPU time
(target < 10 s; on a shared machine the CPU time is the fairer figure), file size
(target < 5 MB) and peak RSS. ``--all-differ`` makes every output of every
round differ instead (the worst case for the file's size: no text repeats).

Run: ``python bench/report.py [--rounds 100] [--jobs 1000] [--db URL] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
from _common import RUNNER, WORDS, machine
from scale import fresh
from sqlalchemy import insert, select

from runner.db import engine as db
from runner.db.models import Batch, DriftReport, Job, Round, Run

START = datetime(2026, 1, 1, 3, tzinfo=UTC)
# Every run row names the same columns (one executemany), failed or not.
EMPTY = dict.fromkeys(
    ("error_type", "error_status", "error_message", "output", "outputs", "finish_reason",
     "response_model", "system_fingerprint", "prompt_tokens", "completion_tokens",
     "total_tokens"),
)  # fmt: skip


def sentence(rng: random.Random, words: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def populate(url: str, rounds: int, jobs: int, args: argparse.Namespace) -> int:
    """Insert the batch, its jobs, rounds, runs and drift reports; returns the batch id."""
    rng = random.Random(20)
    engine = db.create_sync_engine(url)
    with engine.begin() as conn:
        batch = conn.execute(
            insert(Batch).returning(Batch.id),
            {"name": "nightly", "source_path": "jobs/nightly.yaml", "source_format": "yaml",
             "source_sha256": "0" * 64, "submitted_at": START, "job_count": jobs},
        ).scalar_one()  # fmt: skip
        body = json.dumps({"model": "gpt-4o-mini", "messages": []})
        conn.execute(
            insert(Job),
            [{"batch_id": batch, "key": f"topic={i:04d}/seed=1", "endpoint": "openai",
              "model": "gpt-4o-mini", "body": body, "seed": i,
              "request_hash": "v1:" + hashlib.sha256(str(i).encode()).hexdigest()}
             for i in range(jobs)],
        )  # fmt: skip
        job_ids = list(conn.execute(select(Job.id).where(Job.batch_id == batch).order_by(Job.id))
                       .scalars())  # fmt: skip
        outputs = [sentence(rng) for _ in range(jobs)]
        fingerprint = "fp_0000000000"
        previous = None
        for number in range(1, rounds + 1):
            at = START + timedelta(days=number - 1)
            changed_backend = number > 1 and number % args.change_every == 0
            if changed_backend:
                fingerprint = f"fp_{number:010d}"
            round_id = conn.execute(
                insert(Round).returning(Round.id),
                {"batch_id": batch, "number": number, "created_at": at,
                 "trigger": "submit" if number == 1 else "schedule",
                 "scheduled_for": None if number == 1 else at},
            ).scalar_one()  # fmt: skip
            rows, failed, differ = [], 0, 0
            for index, job_id in enumerate(job_ids):
                if changed_backend or args.all_differ or rng.random() < args.noise:
                    outputs[index] = sentence(rng)
                    differ += 1
                fails = rng.random() < 0.005
                failed += fails
                row = {"round_id": round_id, "job_id": job_id, "attempts": 1, "max_attempts": 3,
                       "available_at": at, "started_at": at, "finished_at": at,
                       "latency_ms": rng.lognormvariate(6.5, 0.4), **EMPTY}  # fmt: skip
                if fails:
                    row.update(state="failed", error_type="rate_limited", error_status=429,
                               error_message="Rate limit reached for requests")  # fmt: skip
                else:
                    row.update(state="succeeded", output=outputs[index],
                               outputs=json.dumps([outputs[index]]), finish_reason="stop",
                               response_model="gpt-4o-mini-2024-07-18",
                               system_fingerprint=fingerprint, prompt_tokens=24,
                               completion_tokens=48, total_tokens=72)  # fmt: skip
                rows.append(row)
            conn.execute(insert(Run), rows)
            status = (
                "baseline" if previous is None else "failures" if failed
                else "fingerprint_changed" if changed_backend
                else "outputs_changed" if differ else "stable"
            )  # fmt: skip
            conn.execute(
                insert(DriftReport),
                {"created_at": at, "batch_id": batch, "round_id": round_id,
                 "previous_round_id": previous, "status": status, "matched": jobs,
                 "exact_matches": jobs - differ, "failed": failed,
                 "fingerprint_changed": jobs if changed_backend else 0},
            )  # fmt: skip
            previous = round_id
    engine.dispose()
    return int(batch)


async def build_in_process(url: str, batch: int) -> str:
    from runner.htmlreport.files import build

    engine = db.create_engine_async(url)
    try:
        return await build(engine, str(batch))
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--change-every", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--all-differ", action="store_true")
    parser.add_argument("--db", help="an admin PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--keep", type=Path, help="keep the database and report here")
    args = parser.parse_args()
    print(machine())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        url = fresh(args.db, root, "report")
        if args.db is None:
            db.upgrade(url)
        started = time.perf_counter()
        batch = populate(url, args.rounds, args.jobs, args)
        print(f"inserted {args.rounds} rounds x {args.jobs} jobs in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        target = root / "report.html"
        env = {**os.environ, "RUNNER_DATABASE_URL": url}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([*RUNNER, "report", str(batch), "-o", str(target)], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        size = target.stat().st_size / 1e6
        print(
            f"runner report: {elapsed:.2f} s wall, {cpu:.2f} s CPU (target < 10 s), "
            f"{size:.2f} MB (target < 5 MB), peak RSS {after.ru_maxrss / 1024:.0f} MB"
        )
        # The same build in this process: the report's own cost, without the CLI's start
        # (``runner`` imports openai and the worker: seconds of a loaded machine's CPU).
        cpu, started = time.process_time(), time.perf_counter()
        page = anyio.run(build_in_process, url, batch)
        print(f"in-process build: {time.perf_counter() - started:.2f} s wall, "
              f"{time.process_time() - cpu:.2f} s CPU, {len(page) / 1e6:.2f} MB")  # fmt: skip
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
