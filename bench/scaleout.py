"""Scale-out on PostgreSQL: N `runner work --burst` processes against one `runner serve`.

A batch of ``--runs`` runs (4,800) is submitted to a new PostgreSQL database, then worked
by one `runner work --burst --concurrency 16` process, and again (a new database, the
same file) by ``--processes`` (4) of them started together, against `runner serve
--latency-ms 200`. Throughput is runs / (last process exit - first process start), so
each process's start-up counts. Also checks that no run was stored twice (attempts that
succeeded per run). Target (issue 19): 4 processes >= 3 x one.

Run: ``python bench/scaleout.py [--db postgresql://postgres@127.0.0.1:5432/postgres]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RUNNER, machine, serve, write_jobs
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def _database(admin: str) -> tuple[str, str]:
    """A new empty database on the server of ``admin``: (its URL, its name)."""
    name = f"bench_scaleout_{uuid.uuid4().hex[:8]}"
    url = make_url(admin).set(drivername="postgresql+psycopg")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.set(drivername="postgresql", database=name).render_as_string(False), name


def _drop(admin: str, name: str) -> None:
    engine = create_engine(
        make_url(admin).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def _duplicates(url: str) -> int:
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    with engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT count(*) - count(DISTINCT run_id) FROM attempts WHERE outcome = 'succeeded'"
            )
        ).scalar_one()
    engine.dispose()
    return int(stored)


def trial(admin: str, work: Path, jobs: Path, processes: int, concurrency: int) -> float:
    """Runs per second of ``processes`` burst workers on a new database."""
    url, name = _database(admin)
    env = {**os.environ, "BENCH_KEY": "sk-bench"}
    try:
        subprocess.run(
            [*RUNNER, "--db", url, "db", "upgrade"],
            cwd=work,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [*RUNNER, "--db", url, "submit", "--endpoint", "bench", str(jobs)],
            cwd=work,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        argv = [
            *RUNNER,
            "--db",
            url,
            "work",
            "--burst",
            "--concurrency",
            str(concurrency),
            "--quiet",
        ]
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                argv, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for _ in range(processes)
        ]
        codes = [proc.wait() for proc in procs]
        elapsed = time.perf_counter() - started
        if any(codes):
            raise RuntimeError(f"a worker exited with {codes}")
        duplicates = _duplicates(url)
    finally:
        _drop(admin, name)
    runs = sum(1 for _ in jobs.open())
    rate = runs / elapsed
    print(
        f"{processes} process(es) x {concurrency} slots: {runs} runs in {elapsed:.1f} s = "
        f"{rate:.1f} runs/s, {duplicates} stored twice",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--db",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin PostgreSQL URL",
    )
    parser.add_argument("--runs", type=int, default=4800)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    print(machine())
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp, serve("--latency-ms", str(args.latency_ms)) as url:
        work = Path(tmp)
        (work / "runner.toml").write_text(
            f'[endpoints.bench]\ntype = "openai"\nbase_url = "{url}"\napi_key_env = "BENCH_KEY"\n'
        )
        jobs = write_jobs(work / "jobs.jsonl", args.runs, max_tokens=16)
        one = trial(args.db, work, jobs, 1, args.concurrency)
        many = trial(args.db, work, jobs, args.processes, args.concurrency)
    verdict = "ok" if many >= 3 * one else "MISSED"
    print(f"{args.processes} processes / 1 = {many / one:.2f} x (target >= 3: {verdict})")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
