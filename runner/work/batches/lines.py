"""A chunk's lines: its input file written, and result lines turned into outcomes.

The input file is the OpenAI Batch input format, one request per line, written to disk
as the runs are read (a page at a time): ``{"custom_id": "run-RUNID-ATTEMPT", "method":
"POST", "url": "/v1/chat/completions", "body": BODY}`` with the stored body inserted
byte for byte. It stops at the endpoint's ``batch_max_bytes``: the runs after that are
left for the next chunk.

A result line becomes an ``Outcome`` as a synchronous try would: a success with its
response, outputs and usage; an error retried (as the same HTTP error would be, a line
that expired or was cancelled included) while attempts are left, else failed. Its
latency is the provider batch's turnaround.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from runner.config import WorkerConfig
from runner.db.models import AttemptOutcome, Via
from runner.db.queue import Outcome
from runner.db.queue.batches import ChunkRequest, custom_id
from runner.endpoints import Completion, EndpointError
from runner.work.tries import answer_fields, backoff_seconds

URL = "/v1/chat/completions"


def input_line(request: ChunkRequest) -> bytes:
    """One line of an input file; the body is the stored JSON, unchanged."""
    head = json.dumps(
        {"custom_id": custom_id(request.run_id, request.attempt), "method": "POST", "url": URL}
    )
    return (head[:-1] + ', "body": ' + request.body + "}\n").encode()


@dataclass
class InputFile:
    """What ``write_input`` wrote, and which runs did not fit."""

    lines: int = 0
    size: int = 0
    left_out: list[int] = field(default_factory=list)


async def write_input(
    path: Path,
    pages: Callable[[int], Awaitable[list[ChunkRequest]]],
    max_bytes: int,
) -> InputFile:
    """Write the chunk's requests (``pages(after_id)`` gives the next page) to ``path``
    up to ``max_bytes``; at least one line, so a body larger than the limit still goes."""
    written = InputFile()
    after = 0
    with path.open("wb") as out:
        while page := await pages(after):
            after = page[-1].run_id
            for request in page:
                if written.left_out:
                    written.left_out.append(request.run_id)
                    continue
                line = input_line(request)
                if written.lines and written.size + len(line) > max_bytes:
                    written.left_out.append(request.run_id)
                    continue
                out.write(line)
                written.lines += 1
                written.size += len(line)
    return written


@dataclass(frozen=True)
class Held:
    """A run a chunk holds: the attempt its line is, and the attempts it may have."""

    attempt: int
    max_attempts: int


@dataclass(frozen=True)
class Turnaround:
    """When the provider batch started and when its end was seen."""

    started_at: datetime
    ended_at: datetime

    @property
    def latency_ms(self) -> float:
        return round((self.ended_at - self.started_at).total_seconds() * 1000, 3)


def success(run_id: int, held: Held, completion: Completion, times: Turnaround) -> Outcome:
    return Outcome(
        run_id=run_id,
        attempt=held.attempt,
        started_at=times.started_at,
        finished_at=times.ended_at,
        latency_ms=times.latency_ms,
        outcome=AttemptOutcome.SUCCEEDED.value,
        n_honoured=None,
        # The schema verdict needs the job's body: not made for batch lines yet.
        **answer_fields(completion),
    )


def failure(
    run_id: int,
    held: Held,
    exc: EndpointError,
    times: Turnaround,
    *,
    config: WorkerConfig,
    retry_via: str,
) -> Outcome:
    """An error line (or a run with no line): retried while attempts are left.

    Retried in a later provider batch at once (that batch's turnaround is the wait), or,
    with ``batch_retry = "sync"``, synchronously after the usual backoff.
    """
    retry = exc.retryable and held.attempt < held.max_attempts
    message = exc.message
    if exc.retryable and not retry:
        message = f"{message} (gave up after {held.attempt} attempts)"
    retry_at = None
    if retry:
        delay = 0.0
        if retry_via == Via.SYNC.value:
            delay = backoff_seconds(held.attempt, config, exc.retry_after)
        retry_at = times.ended_at + timedelta(seconds=delay)
    return Outcome(
        run_id=run_id,
        attempt=held.attempt,
        started_at=times.started_at,
        finished_at=times.ended_at,
        latency_ms=times.latency_ms,
        outcome=AttemptOutcome.RETRY.value if retry else AttemptOutcome.FAILED.value,
        http_status=exc.status,
        retry_at=retry_at,
        retry_after_ms=None if exc.retry_after is None else round(exc.retry_after * 1000, 3),
        provider_request_id=exc.request_id,
        error_type=exc.error_type,
        error_message=message,
        error_body=exc.body,
        via=Via.SYNC.value if retry and retry_via == Via.SYNC.value else None,
    )
