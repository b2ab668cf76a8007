"""What a parsed job file is: its jobs (``JobSpec``) and its header (``JobFile``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.scheduling.cron import ScheduleSpec

SourceFormat = Literal["yaml", "openai-batch"]


@dataclass(frozen=True)
class JobSpec:
    """One immutable request: what is sent, where, and under which key."""

    key: str
    endpoint: str
    model: str
    body: str  # canonical JSON of the request body, seed included
    request_hash: str
    seed: int | None
    line: int | None  # where in the source file this job comes from
    api: str = "chat"  # the request's kind: a runner.kinds.Api value


@dataclass
class JobFile:
    """A parsed job file: header known up front, jobs streamed."""

    path: Path
    format: SourceFormat
    name: str
    endpoint: str
    max_attempts: int | None
    _jobs: Iterator[JobSpec]
    _sha: Any = field(default_factory=hashlib.sha256)
    schedule: ScheduleSpec | None = None  # YAML ``schedule:``, created with the batch
    endpoint_line: int | None = None  # where the file names its endpoint, if it does
    # How many jobs it expands into, when known before they stream (YAML).
    job_count: int | None = None

    def jobs(self) -> Iterator[JobSpec]:
        return self._jobs

    @property
    def sha256(self) -> str:
        return str(self._sha.hexdigest())
