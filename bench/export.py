"""Export: peak memory and speed of ``runner export`` of a 100,000-run round.

1. A 100,000-line OpenAI Batch file is submitted to the ``local`` endpoint and worked
   by ``runner work --burst`` (the built-in model, in-process): real stored responses.
2. ``runner export BATCH --format F -o FILE``, each format in its own process: wall
   time, lines, file size and that process's peak RSS. Target: < 150 MB.
3. For scale: the peak RSS of ``runner sql "SELECT 1"`` (interpreter and imports).

SQLite by default; ``--db postgresql://...`` (an admin URL: the script creates and
migrates a ``bench_export`` database) runs it on PostgreSQL. ``--keep DIR`` keeps the
database and the exports there, and reuses a database already in DIR.

Run: ``python bench/export.py [--runs 100000] [--db URL] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RUNNER, machine, write_jobs
from scale import fresh

FORMATS = ("openai-batch", "jsonl", "csv")
# Runs a command and prints the peak RSS of it (the only child of this process), in KB.
MEASURE = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def run(env: dict[str, str], *args: str) -> None:
    subprocess.run([*RUNNER, *args], env=env, check=True, stdout=subprocess.DEVNULL)


def peak_rss_mb(env: dict[str, str], *args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of ``runner ARGS`` in a process of its own."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *RUNNER, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started, int(done.stdout.strip()) / 1024


def populate(env: dict[str, str], root: Path, runs: int) -> None:
    jobs = write_jobs(root / "jobs.jsonl", runs, max_tokens=48)
    started = time.perf_counter()
    run(env, "submit", "--endpoint", "local", "--name", "export-bench", str(jobs))
    run(env, "work", "--burst", "--concurrency", "64")
    print(f"stored {runs:,} runs in {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--db", help="an admin PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the database and files here")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        sqlite_file = root / "export.db"
        reuse = args.db is None and sqlite_file.exists()
        url = f"sqlite:///{sqlite_file}" if args.db is None else fresh(args.db, root, "export")
        env = {**os.environ, "RUNNER_DATABASE_URL": url}
        if not reuse:
            populate(env, root, args.runs)
        seconds, baseline = peak_rss_mb(env, "sql", "SELECT 1")
        print(f"runner sql 'SELECT 1': peak RSS {baseline:.0f} MB ({seconds:.1f} s)")
        for fmt in FORMATS:
            out = root / f"export.{fmt}"
            seconds, rss = peak_rss_mb(
                env, "export", "export-bench", "--format", fmt, "-o", str(out)
            )
            with out.open(encoding="utf-8", newline="") as handle:
                # CSV: records (outputs hold newlines) without the header.
                lines = (
                    sum(1 for _ in csv.reader(handle)) - 1
                    if fmt == "csv"
                    else sum(1 for _ in handle)
                )
            size = out.stat().st_size / 1e6
            print(
                f"export --format {fmt}: {lines:,} lines, {size:.0f} MB in {seconds:.1f} s "
                f"({lines / seconds:,.0f} lines/s), peak RSS {rss:.0f} MB"
            )


if __name__ == "__main__":
    main()
