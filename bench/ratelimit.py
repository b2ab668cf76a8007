"""Rate-limit utilisation: does the runner use the whole allowance without living on 429s?

Six cases run side by side, each a ``runner serve`` with a limit and a ``runner work``
process on its own SQLite file: an RPM-bound and a TPM-bound server, each with the
worker told the exact limit, a limit 10 % too high, and no limit at all. After
``--minutes`` (default 3) the workers are stopped and, over the window after the
first minute, the script reports accepted requests (or server-counted tokens) per
minute against the limit, the share of responses that were 429, and runs failed.
Target: >= 97 % of the binding limit, < 0.5 % 429s, no run failed.

Run: ``python bench/ratelimit.py [--minutes 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RUNNER, machine, serve, write_jobs

from runner.localmodel.service import LocalModelService

RPM = 1200
TPM = 120_000


@dataclass(frozen=True)
class Case:
    name: str
    bound: str  # "requests" or "tokens"
    configured: int | None  # what the worker is told

    @property
    def limit(self) -> int:
        return RPM if self.bound == "requests" else TPM


CASES = [
    Case("rpm, exact", "requests", RPM),
    Case("rpm, 10% too high", "requests", int(RPM * 1.1)),
    Case("rpm, not configured", "requests", None),
    Case("tpm, exact", "tokens", TPM),
    Case("tpm, 10% too high", "tokens", int(TPM * 1.1)),
    Case("tpm, not configured", "tokens", None),
]


def start(case: Case, url: str, workdir: Path, minutes: float) -> subprocess.Popen[bytes]:
    key = "rpm" if case.bound == "requests" else "tpm"
    limit = f"{key} = {case.configured}\n" if case.configured else ""
    (workdir / "runner.toml").write_text(
        f'[endpoints.serve]\ntype = "openai"\nbase_url = "{url}"\ntimeout = 30\n{limit}'
        "[worker]\nconcurrency = 64\nmax_attempts = 10\npoll_seconds = 0.05\n"
    )
    per_minute = RPM if case.bound == "requests" else TPM // 110
    jobs = write_jobs(
        workdir / "jobs.jsonl",
        int(per_minute * (minutes + 1.5)),
        max_tokens=20 if case.bound == "requests" else 100,
    )
    env = {**os.environ, "RUNNER_DATABASE_URL": f"sqlite:///{workdir / 'runner.db'}"}
    subprocess.run(
        [*RUNNER, "submit", "--endpoint", "serve", str(jobs)],
        env=env,
        check=True,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    return subprocess.Popen([*RUNNER, "work"], env=env, cwd=workdir)


def measure(case: Case, workdir: Path, minutes: float) -> dict[str, float]:
    service = LocalModelService()
    with sqlite3.connect(workdir / "runner.db") as conn:
        rows = conn.execute(
            "SELECT a.started_at, a.latency_ms, a.http_status, a.outcome, j.body FROM attempts a "
            "JOIN runs r ON r.id = a.run_id JOIN jobs j ON j.id = r.job_id"
        ).fetchall()
        failed = conn.execute("SELECT count(*) FROM runs WHERE state = 'failed'").fetchone()[0]
    times = [datetime.fromisoformat(r[0]).timestamp() for r in rows]
    start = min(times) + 60
    end = min(times) + 60 * minutes
    window = [r for r, t in zip(rows, times, strict=True) if start <= t < end]
    accepted = [r for r in window if r[2] == 200 or r[3] == "succeeded"]
    if case.bound == "requests":
        used = len(accepted)
    else:
        used = sum(
            service.estimate_tokens("POST", "/v1/chat/completions", r[4].encode()) for r in accepted
        )
    per_minute = used / ((end - start) / 60)
    limited = sum(1 for r in window if r[2] == 429)
    return {
        "utilisation": per_minute / case.limit,
        "per_minute": per_minute,
        "share_429": limited / max(1, len(window)),
        "responses": len(window),
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args()
    print(machine())
    print(f"server limits: {RPM} requests/min (RPM-bound cases), {TPM} tokens/min (TPM-bound)")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        procs = []
        for index, case in enumerate(CASES):
            workdir = Path(tmp) / f"case{index}"
            workdir.mkdir()
            flag = ["--rpm", str(RPM)] if case.bound == "requests" else ["--tpm", str(TPM)]
            url = stack.enter_context(serve(*flag))
            procs.append((case, workdir, start(case, url, workdir, args.minutes)))
        time.sleep(args.minutes * 60)
        for _, _, proc in procs:
            proc.send_signal(signal.SIGTERM)
        for _, _, proc in procs:
            proc.wait(120)
        print(
            f"{'case':24} {'limit/min':>10} {'used/min':>10} {'use':>7} {'429s':>7} "
            f"{'responses':>9} {'failed':>6}"
        )
        for case, workdir, _ in procs:
            m = measure(case, workdir, args.minutes)
            print(
                f"{case.name:24} {case.limit:>10} {m['per_minute']:>10.0f} "
                f"{m['utilisation']:>7.1%} {m['share_429']:>7.2%} {m['responses']:>9} "
                f"{m['failed']:>6}"
            )


if __name__ == "__main__":
    main()
