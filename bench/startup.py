"""Start-up and finish: what a command costs before it does anything, and after.

1. ``python -c pass``, ``python -c "import openai"``, ``runner --help`` and
   ``runner --version``: wall time of each process, the median of ``--repeat`` runs
   (interleaved, so a load spike hits them alike). Target: --help and --version
   <= 3 x ``python -c pass``.
2. ``runner work --burst`` against a small HTTP server in this process that answers chat
   completions after ``--latency-ms``: from process start to the first request the
   server receives, and from the last response it sends to process exit (median of
   ``--repeat`` runs of ``--runs`` runs each, every one on a fresh copy of one SQLite
   database). Targets: first request <= 1.5 x ``import openai``; last response to
   exit <= 0.3 s.
3. ``runner status`` on a database of 10,000 finished runs (``--status-runs``).
   Target: <= 1 s.

``--old PYTHON`` (the interpreter of another checkout's venv, e.g. the main branch's)
measures that one too, in the same run, each measurement alternating between the two.

Run: ``python bench/startup.py [--repeat 7] [--old /path/to/old/.venv/bin/python]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write_jobs


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the measured processes: Python's default bytecode cache on (an
    installed package has its .pyc files; a PYTHONDONTWRITEBYTECODE left set here would
    make every run compile the runner's sources again), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


class Stamps:
    """When the server saw its first request and sent its last response (monotonic)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first_request: float | None = None
        self.last_response: float | None = None
        self.responses = 0

    def reset(self) -> None:
        with self.lock:
            self.first_request = self.last_response = None
            self.responses = 0


def _reply(body: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body.get("model", "m"),
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
        }
    ).encode()


@contextmanager
def stamping_server(latency: float) -> Iterator[tuple[str, Stamps]]:
    """An OpenAI-compatible server on 127.0.0.1 that answers every chat completion."""
    stamps = Stamps()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            received = time.monotonic()
            with stamps.lock:
                if stamps.first_request is None:
                    stamps.first_request = received
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            data = _reply(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            sent = time.monotonic()
            with stamps.lock:
                stamps.responses += 1
                stamps.last_response = max(stamps.last_response or 0.0, sent)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", stamps
    finally:
        server.shutdown()
        server.server_close()


CPU: dict[str, list[float]] = {}  # CPU seconds (user + system) of each measured command


def wall(argv: list[str], cwd: Path, env: dict[str, str], name: str | None = None) -> float:
    """Wall time of one process; its CPU time is kept in ``CPU[name]``: the load of the
    machine inflates the wall time far more than the CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if name is not None:
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        CPU.setdefault(name, []).append(cpu)
    return elapsed


def runner(python: str) -> list[str]:
    return [python, "-m", "runner"]


def startup_times(pythons: dict[str, str], repeat: int, cwd: Path) -> dict[str, float]:
    """Median wall time of each (checkout, command), interleaved."""
    env = child_env()
    commands: dict[str, list[str]] = {}
    for label, python in pythons.items():
        # The console script the user types: the venv's bin/runner.
        script = str(Path(python).parent / "runner")
        commands[f"{label}: python -c pass"] = [python, "-c", "pass"]
        commands[f"{label}: python -c 'import openai'"] = [python, "-c", "import openai"]
        commands[f"{label}: runner --help"] = [script, "--help"]
        commands[f"{label}: runner --version"] = [script, "--version"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # warm the disk cache and the .pyc files
        wall(argv, cwd, env)
    for _ in range(repeat):
        for name, argv in commands.items():
            times[name].append(wall(argv, cwd, env, name))
    return {name: statistics.median(t) for name, t in times.items()}


def prepare_burst(python: str, work: Path, base_url: str, runs: int) -> Path:
    """A SQLite database with ``runs`` runs queued for the stamping server."""
    (work / "runner.toml").write_text(
        f'[endpoints.bench]\ntype = "openai"\nbase_url = "{base_url}"\napi_key_env = "BENCH_KEY"\n'
    )
    jobs = write_jobs(work / "jobs.jsonl", runs, max_tokens=16)
    subprocess.run(
        [
            *runner(python),
            "--db",
            "sqlite:///template.db",
            "submit",
            "--endpoint",
            "bench",
            str(jobs),
        ],
        cwd=work,
        env=child_env(BENCH_KEY="sk-bench"),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return work / "template.db"


def burst_once(
    python: str, work: Path, template: Path, stamps: Stamps, runs: int
) -> tuple[float, float]:
    """(process start -> first request, last response -> process exit), seconds."""
    shutil.copyfile(template, work / "runner.db")
    stamps.reset()
    env = child_env(BENCH_KEY="sk-bench")
    started = time.monotonic()
    proc = subprocess.run(
        [*runner(python), "--db", "sqlite:///runner.db", "work", "--burst"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ended = time.monotonic()
    if proc.returncode != 0 or stamps.responses != runs:
        raise RuntimeError(
            f"work --burst: exit {proc.returncode}, {stamps.responses} "
            f"responses of {runs}: {proc.stderr[-2000:]}"
        )
    assert stamps.first_request is not None and stamps.last_response is not None
    return stamps.first_request - started, ended - stamps.last_response


def burst_times(
    pythons: dict[str, str], repeat: int, runs: int, latency: float, tmp: Path
) -> dict[str, tuple[float, float, float]]:
    """Median (start -> first request, last response -> exit, ``import openai``) of each
    checkout; ``python -c "import openai"`` runs just before each burst worker, so the
    two see the same load."""
    firsts: dict[str, list[float]] = {label: [] for label in pythons}
    tails: dict[str, list[float]] = {label: [] for label in pythons}
    imports: dict[str, list[float]] = {label: [] for label in pythons}
    with stamping_server(latency) as (base_url, stamps):
        templates = {}
        for label, python in pythons.items():
            work = tmp / f"burst-{label}"
            work.mkdir()
            templates[label] = (work, prepare_burst(python, work, base_url, runs))
            burst_once(python, work, templates[label][1], stamps, runs)  # warm-up
        for _ in range(repeat):
            for label, python in pythons.items():
                work, template = templates[label]
                imports[label].append(wall([python, "-c", "import openai"], work, child_env()))
                first, tail = burst_once(python, work, template, stamps, runs)
                firsts[label].append(first)
                tails[label].append(tail)
    return {
        label: (
            statistics.median(firsts[label]),
            statistics.median(tails[label]),
            statistics.median(imports[label]),
        )
        for label in pythons
    }


def status_times(pythons: dict[str, str], repeat: int, runs: int, tmp: Path) -> dict[str, float]:
    """``runner status`` on one database of ``runs`` finished runs (the local model's)."""
    work = tmp / "status"
    work.mkdir()
    jobs = write_jobs(work / "jobs.jsonl", runs, max_tokens=32)
    first = next(iter(pythons.values()))
    subprocess.run(
        [
            *runner(first),
            "--db",
            "sqlite:///runner.db",
            "run",
            "--endpoint",
            "local",
            "--quiet",
            str(jobs),
        ],
        cwd=work,
        env=child_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    env = child_env()
    times: dict[str, list[float]] = {label: [] for label in pythons}
    for python in pythons.values():  # warm-up
        wall([*runner(python), "--db", "sqlite:///runner.db", "status"], work, env)
    for _ in range(repeat):
        for label, python in pythons.items():
            argv = [str(Path(python).parent / "runner"), "--db", "sqlite:///runner.db", "status"]
            times[label].append(wall(argv, work, env, f"{label}: runner status"))
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--runs", type=int, default=64, help="runs per burst worker")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--status-runs", type=int, default=10_000)
    parser.add_argument("--old", help="another checkout's venv python, measured beside this one")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cli", "burst", "status"])
    args = parser.parse_args()

    pythons = {"new": sys.executable}
    if args.old:
        pythons = {"old": args.old, "new": sys.executable}
    load = os.getloadavg()
    print(machine())
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "cli" not in args.skip:
            times = startup_times(pythons, args.repeat, tmp)
            print(f"\nprocess wall time, median of {args.repeat}:")
            for name, seconds in times.items():
                cpu = statistics.median(CPU[name])
                print(f"  {name:<40} {seconds * 1000:8.0f} ms  (CPU {cpu * 1000:5.0f} ms)")
            for label in pythons:
                bare = times[f"{label}: python -c pass"]
                for cmd in ("runner --help", "runner --version"):
                    ratio = times[f"{label}: {cmd}"] / bare
                    print(f"  {label}: {cmd} / python -c pass = {ratio:.1f} x (target <= 3)")
        if "burst" not in args.skip:
            bursts = burst_times(pythons, args.repeat, args.runs, args.latency_ms / 1000, tmp)
            print(
                f"\nrunner work --burst, {args.runs} runs, {args.latency_ms:g} ms latency, "
                f"median of {args.repeat} (each after a python -c 'import openai'):"
            )
            for label, (first, tail, imported) in bursts.items():
                print(
                    f"  {label}: import openai {imported * 1000:6.0f} ms; start -> first "
                    f"request {first * 1000:6.0f} ms = {first / imported:.2f} x import openai "
                    f"(target <= 1.5); last response -> exit {tail * 1000:6.0f} ms "
                    "(target <= 300)"
                )
        if "status" not in args.skip:
            statuses = status_times(pythons, args.repeat, args.status_runs, tmp)
            print(f"\nrunner status, {args.status_runs} finished runs, median of {args.repeat}:")
            for label, seconds in statuses.items():
                cpu = statistics.median(CPU[f"{label}: runner status"])
                print(
                    f"  {label}: {seconds * 1000:6.0f} ms (CPU {cpu * 1000:5.0f} ms; "
                    "target <= 1000)"
                )
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
