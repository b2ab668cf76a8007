"""What one worker did: counts for its summary and its progress display."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.db.models import AttemptOutcome
from runner.db.queue import Outcome


@dataclass
class WorkerStats:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    fenced_out: int = 0  # results not stored: their runs were no longer this worker's
    rate_limited: int = 0
    abandoned: int = 0  # runs cancelled by a user or taken over while this worker held them
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # endpoint -> why this worker stopped claiming its runs
    disabled_endpoints: dict[str, str] = field(default_factory=dict)
    # burst: why it exited with runs left (queued for later than it waits, runner.work.waiting)
    stranded: str | None = None
    database_outages: int = 0  # times the database went away while this worker ran

    def discarded(self, outcome: Outcome) -> None:
        """A result the queue refused (its run was no longer ours) is not this worker's."""
        self.fenced_out += 1
        if outcome.outcome == AttemptOutcome.SUCCEEDED.value:
            self.succeeded -= 1
        elif outcome.outcome == AttemptOutcome.RETRY.value:
            self.retried -= 1
        elif outcome.outcome == AttemptOutcome.FAILED.value:
            self.failed -= 1
        else:
            self.released -= 1
