"""What a burst worker says while it waits, and when it stops waiting (runner.work.waiting)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runner.config import WorkerConfig
from runner.db.queue import LaterRuns, Unfinished
from runner.work.waiting import stranded_text, wait_limit, waiting_text

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def later(seconds: float, runs: int = 2, batch: int = 1) -> LaterRuns:
    return LaterRuns(batch, 3, runs, NOW + timedelta(seconds=seconds))


def test_it_names_the_runs_rounds_and_time_it_waits_for() -> None:
    left = Unfinished(queued=3, running=1, later=(later(30), later(90, runs=1, batch=2)))
    assert waiting_text(left) == (
        "waiting for runs held by other workers and 2 runs of batch 1 round 3 and "
        "1 run of batch 2 round 3, queued until 2026-11-23 10:00:30 UTC"
    )
    assert waiting_text(Unfinished()) is None


def test_it_stops_only_when_everything_left_is_queued_far_ahead() -> None:
    limit = wait_limit(WorkerConfig(backoff_max_seconds=60))
    assert limit == 300
    far = later(3 * 86400)
    assert stranded_text(Unfinished(queued=2, later=(later(299),)), NOW, limit) is None
    assert stranded_text(Unfinished(queued=2, running=1, later=(far,)), NOW, limit) is None
    assert stranded_text(Unfinished(queued=3, later=(far,)), NOW, limit) is None  # 1 due now
    assert stranded_text(Unfinished(queued=2, later=(far,)), NOW, limit) == (
        "nothing to run before 2026-11-26 10:00:00 UTC, 3 days from now, longer than a "
        "burst worker waits (5 min); queued for later: 2 runs of batch 1 round 3; run "
        "`runner work` to wait for them, `runner work --burst` again after that time, or "
        "`runner work --burst --now 2026-11-26T10:00:00Z` to run them now (a testing aid)"
    )
