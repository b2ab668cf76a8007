"""Working the queue: the worker process's task group and its parts.

``worker``  the Worker: claim loop, request slots, heartbeat, checkpoints, signals, stop;
``tries``   one try of a claimed run under its endpoint's limits, as an outcome;
``writer``  outcomes stored in batches, fenced, held through a database outage;
``stats``   what a worker did, for its summary and progress display;
``waiting`` what a burst worker waits for, and when it stops waiting.
"""

from __future__ import annotations

from runner.work.stats import WorkerStats
from runner.work.tries import backoff_seconds
from runner.work.worker import Worker, worker_id

__all__ = ["Worker", "WorkerStats", "backoff_seconds", "worker_id"]
