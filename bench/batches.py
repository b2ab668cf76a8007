"""Batch rounds: N runs through the built-in model's Batch API, end to end.

1. ``runner serve`` in a process of its own (its Batch API executes the lines there).
2. An N-line OpenAI Batch file is submitted to an endpoint on it with ``mode = "batch"``.
3. ``runner work --burst`` in a process of its own: it claims chunks of 50,000 runs,
   writes and uploads their input files, creates and polls the provider batches,
   downloads the results and stores every line. Reported: wall time, stored runs per
   second (of the whole: write + upload + provider + download + map back + store), the
   provider batches, and the worker's peak RSS (target: <= 300 MB, whatever N).

The provider's own time (executing the lines through the model) is part of the wall
time; ``--max-tokens`` keeps it small. SQLite by default; ``--db postgresql://...`` (an
admin URL: a ``bench_batches`` database is made and migrated) runs it on PostgreSQL.

Run: ``python bench/batches.py [--runs 1000000] [--max-tokens 4] [--db URL]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RUNNER, machine, serve, write_jobs
from scale import fresh

# Runs a command and prints the peak RSS of it (the only child of this process), in KB.
MEASURE = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--db", default=None, help="PostgreSQL admin URL (default: SQLite)")
    args = parser.parse_args()
    print(machine())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp, serve("--batch-turnaround-ms", "0") as url:
        root = Path(tmp)
        db_url = fresh(args.db, root, "bench_batches")
        (root / "runner.toml").write_text(
            "[worker]\nbatch_poll_seconds = 2\n\n"
            f'[endpoints.serve]\ntype = "openai"\nbase_url = "{url}"\ntimeout = 600\n'
            'mode = "batch"\n',
            encoding="utf-8",
        )
        env = {**os.environ, "RUNNER_DATABASE_URL": db_url}
        jobs = write_jobs(root / "jobs.jsonl", args.runs, max_tokens=args.max_tokens)
        started = time.perf_counter()
        subprocess.run(
            [*RUNNER, "submit", "--endpoint", "serve", str(jobs)],
            cwd=root, env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        print(f"submit: {args.runs:,} runs in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, *RUNNER, "work", "--burst", "-q"],
            cwd=root, env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        rss = int(done.stdout.strip().splitlines()[-1]) / 1024
        counts = subprocess.run(
            [*RUNNER, "sql", "--format", "csv",
             "SELECT (SELECT count(*) FROM runs WHERE state = 'succeeded'), "
             "(SELECT count(*) FROM provider_batches)"],
            cwd=root, env=env, check=True, capture_output=True, text=True,
        ).stdout.splitlines()[-1]  # fmt: skip
        stored, batches = (int(x) for x in counts.split(","))
        print(
            f"work: {stored:,} runs stored in {seconds:.1f} s ({stored / seconds:,.0f} runs/s), "
            f"{batches} provider batches, worker peak RSS {rss:.0f} MB"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
