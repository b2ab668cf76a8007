"""Bounded submit: how long a big SQLite submit keeps workers from the write lock, and how
fast a YAML alias bomb is refused.

1. ``runner submit`` of an N-line OpenAI Batch file in a subprocess, on SQLite, while a
   probe (another connection, as a worker would) takes the write lock (``BEGIN IMMEDIATE``
   then ``COMMIT``) every 10 ms: the longest the probe waited is the longest the submit
   held the lock. Target: well under a worker's 60 s busy timeout at any size (chunks
   keep it short); the submit's wall time is printed too.
2. A 9-deep alias bomb (nine nested aliases of nine: 9^9 nodes if expanded): the time
   ``load_job_file`` takes to refuse it in this process, and the wall time of ``runner
   submit`` until its error beside that of ``runner --version`` (Python's start-up).
   Target: refused in < 1 s.

Run: ``python bench/submit_lock.py [--jobs 100000 --jobs 1000000]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RUNNER, machine, write_jobs

from runner.db import engine as db
from runner.errors import JobFileError
from runner.jobfile import load_job_file


def _probe(path: Path, stop: threading.Event, waits: list[float]) -> None:
    conn = sqlite3.connect(path, timeout=600, isolation_level=None)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
            waits.append(time.perf_counter() - started)
            stop.wait(0.01)
    finally:
        conn.close()


def submit_lock(work: Path, count: int) -> tuple[float, float, int]:
    """(submit wall time, longest probe wait, probes) for a ``count``-job submit."""
    jobs = write_jobs(work / f"jobs-{count}.jsonl", count, max_tokens=16)
    path = work / f"lock-{count}.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    stop, waits = threading.Event(), []
    probe = threading.Thread(target=_probe, args=(path, stop, waits))
    probe.start()
    started = time.perf_counter()
    subprocess.run(
        [*RUNNER, "--db", url, "submit", "--endpoint", "local", str(jobs)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    stop.set()
    probe.join()
    return elapsed, max(waits), len(waits)


def alias_bomb(work: Path) -> tuple[float, float, float, str]:
    """(refusal in process, refusal by the CLI, a trivial command, the CLI's error line)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = work / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n", encoding="utf-8")
    started = time.perf_counter()
    with contextlib.suppress(JobFileError):
        load_job_file(bomb)
    in_process = time.perf_counter() - started
    url = f"sqlite:///{work / 'bomb.db'}"
    db.upgrade(url)
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [*RUNNER, "--db", url, "submit", str(bomb)], capture_output=True, text=True, timeout=60
        )
        line = f"exit {result.returncode}: {result.stderr.strip()}"
    except subprocess.TimeoutExpired:
        line = "not refused: killed after 60 s"
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([*RUNNER, "--version"], check=True, stdout=subprocess.DEVNULL)
    baseline = time.perf_counter() - started
    return in_process, elapsed, baseline, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, action="append", help="submit sizes [100000]")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        in_process, elapsed, baseline, line = alias_bomb(work)
        print(
            f"alias bomb ({os.path.getsize(work / 'bomb.yaml')} bytes): refused in "
            f"{in_process * 1000:.1f} ms by load_job_file; `runner submit` {elapsed:.2f} s "
            f"(`runner --version` {baseline:.2f} s): {line}"
        )
        for count in args.jobs or [100_000]:
            elapsed, longest, probes = submit_lock(work, count)
            print(
                f"submit {count:,} jobs (SQLite): {elapsed:.1f} s; longest wait for the "
                f"write lock: {longest * 1000:.0f} ms ({probes} probes)"
            )


if __name__ == "__main__":
    main()
