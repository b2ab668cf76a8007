"""What a burst worker waits for when it can claim nothing, and when it stops waiting.

A burst worker (``runner work --burst``) exits once nothing is queued or running. Queued
runs that no claim may take yet keep it waiting: a retry's backoff or a server's
Retry-After, or a time set by a worker whose clock ran ahead (``--now``). It says what
it waits for (its progress line, and an info log line when that changes). When all that
is left is queued for later than it waits (``wait_limit``: 5 minutes, or the longest
retry backoff if longer), it exits non-zero with one line that says what is left and
how to run it, instead of hanging.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from runner.config import WorkerConfig
from runner.db.queue import LaterRuns, Unfinished

BURST_WAIT_SECONDS = 300.0


def wait_limit(config: WorkerConfig) -> float:
    """How far ahead a burst worker waits for queued runs, in seconds."""
    return max(BURST_WAIT_SECONDS, config.backoff_max_seconds)


def _at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _rounds(later: tuple[LaterRuns, ...]) -> str:
    """``3 runs of batch 1 round 2 and 1 run of batch 4 round 1``"""
    return " and ".join(
        f"{r.runs} run{'' if r.runs == 1 else 's'} of batch {r.batch_id} round {r.round_number}"
        for r in later
    )


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def waiting_text(left: Unfinished) -> str | None:
    """What a worker that can claim nothing waits for; None when nothing is left."""
    parts = []
    if left.running:  # no count: the text changes (and is logged) only when the wait does
        parts.append("runs held by other workers")
    if left.later:
        first = _at(left.later[0].until)
        parts.append(f"{_rounds(left.later)}, queued until {first}")
    if not parts and left.count:
        parts.append("queued runs other workers are claiming")
    return f"waiting for {' and '.join(parts)}" if parts else None


def stranded_text(left: Unfinished, now: datetime, limit: float) -> str | None:
    """Why a burst worker stops with runs left: all of them are queued for later than
    ``limit`` seconds from ``now``; None when it should go on waiting."""
    waiting = sum(r.runs for r in left.later)
    if not left.later or left.running or waiting < left.queued:
        return None
    first = left.later[0].until
    ahead = (first - now).total_seconds()
    if ahead <= limit:
        return None
    # Rounded up to the second: a clock started there finds them due.
    iso = (first + timedelta(microseconds=999_999)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"nothing to run before {_at(first)}, {_span(ahead)} from now, longer than a burst "
        f"worker waits ({_span(limit)}); queued for later: {_rounds(left.later)}; "
        f"run `runner work` to wait for them, `runner work --burst` again after that time, "
        f"or `runner work --burst --now {iso}` to run them now (a testing aid)"
    )
