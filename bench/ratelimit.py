"""Rate-limit utilisation: does the runner use the whole allowance without living on 429s?

Six cases run side by side, each a ``runner serve`` with a limit and a ``runner work``
process on its own SQLite file: an RPM-bound and a TPM-bound server, each with the
worker told the exact limit, a limit 10 % too high, and no limit at all. After
``--minutes`` (default 2) the workers are stopped. Per case the script reports the
steady utilisation of the binding limit (accepted requests, or tokens as the server
counts them, per minute from the later of the first minute's end and the moment the
server's initial bucket is spent, to the last request), the share of responses that were 429
over the whole run (first minute included, and how many came in it), and runs failed.
Target: >= 99.5 % of the binding limit, < 0.5 % 429s over the whole run, no run failed.

Run: ``python bench/ratelimit.py [--minutes 2]``. To measure other code with this
script, put its checkout first on ``PYTHONPATH`` (the workers run ``python -m runner``).
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
        int(per_minute * (minutes + 3)),
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


def measure(case: Case, workdir: Path) -> dict[str, float]:
    """Steady use of the limit once the server's initial bucket is spent; 429s over the
    whole run."""
    service = LocalModelService()
    with sqlite3.connect(workdir / "runner.db") as conn:
        rows = conn.execute(
            "SELECT a.started_at, a.http_status, a.outcome, j.body FROM attempts a "
            "JOIN runs r ON r.id = a.run_id JOIN jobs j ON j.id = r.job_id "
            "ORDER BY a.started_at"
        ).fetchall()
        failed = conn.execute("SELECT count(*) FROM runs WHERE state = 'failed'").fetchone()[0]
    times = [datetime.fromisoformat(r[0]).timestamp() for r in rows]
    accepted = [r[1] == 200 or r[2] == "succeeded" for r in rows]
    if case.bound == "requests":
        costs = [1.0] * len(rows)
    else:
        body = "/v1/chat/completions"
        costs = [float(service.estimate_tokens("POST", body, r[3].encode())) for r in rows]
    # Steady state starts once the server's bucket is empty after the first minute: a
    # replay of the server's bucket (full at the first request, refilled at limit/60 a
    # second, less what it accepted), so no unspent initial budget flatters the window.
    first, rate, biggest = times[0], case.limit / 60, max(costs)
    start, level, last = None, float(case.limit), first
    for t, ok, cost in zip(times, accepted, costs, strict=True):
        level = min(float(case.limit), level + rate * (t - last)) - (cost if ok else 0.0)
        last = t
        if t >= first + 60 and level <= biggest:
            start = t
            break
    if start is None:  # never used up: the worker could not keep up
        start = first + 60
    end = times[-1]
    used = sum(
        c for t, ok, c in zip(times, accepted, costs, strict=True) if ok and start <= t < end
    )
    per_minute = used / max(end - start, 1e-9) * 60
    limited = [t for r, t in zip(rows, times, strict=True) if r[1] == 429]
    return {
        "utilisation": per_minute / case.limit,
        "per_minute": per_minute,
        "window_s": end - start,
        "share_429": len(limited) / max(1, len(rows)),
        "first_minute_429": sum(1 for t in limited if t < first + 60),
        "responses": len(rows),
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
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
            f"{'case':24} {'limit/min':>10} {'used/min':>10} {'use':>7} {'window':>7} "
            f"{'429s':>7} {'in min 1':>8} {'responses':>9} {'failed':>6}"
        )
        for case, workdir, _ in procs:
            m = measure(case, workdir)
            print(
                f"{case.name:24} {case.limit:>10} {m['per_minute']:>10.0f} "
                f"{m['utilisation']:>7.2%} {m['window_s']:>6.0f}s {m['share_429']:>7.2%} "
                f"{m['first_minute_429']:>8} {m['responses']:>9} {m['failed']:>6}"
            )


if __name__ == "__main__":
    main()
