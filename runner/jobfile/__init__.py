"""Job files -> validated, frozen job specs.

Two formats:

* YAML job specs (``.yaml``/``.yml``, ``yamlspec``) that expand into many requests:
  models x items x vars (cartesian) x seeds x repeat, in that order.
* OpenAI Batch API input files (``.jsonl``, ``batch``), one request per line, taken as
  they are (chat, responses and embeddings lines, by each line's ``url``).

Every problem is a ``JobFileError`` naming file, line and field, and hostile input is
refused before it costs memory or time (``values``: bounded nesting, no YAML aliases,
JSON-only values, storable text). Jobs are produced lazily (``JobFile.jobs()``) so a
million-line JSONL is never held in memory; ``JobFile.sha256`` is complete once the
iterator is exhausted. ``max_jobs`` bounds how many jobs one file may give.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from runner.errors import JobFileError
from runner.jobfile.batch import load_jsonl
from runner.jobfile.spec import JobFile, JobSpec, SourceFormat
from runner.jobfile.yamlspec import load_yaml

__all__ = ["JobFile", "JobSpec", "SourceFormat", "find_duplicate", "load_job_file"]


def load_job_file(
    path: Path,
    *,
    endpoint: str | None = None,
    name: str | None = None,
    max_jobs: int | None = None,
) -> JobFile:
    """Open a job file; ``endpoint`` and ``name`` override what the file says.

    ``max_jobs``: a file that would give more jobs is refused (a YAML file before any
    job is built, a JSONL file at the line past the limit).
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise JobFileError(str(path), None, None, "no such file")
    if suffix in (".yaml", ".yml"):
        return load_yaml(path, endpoint, name, max_jobs)
    if suffix == ".jsonl":
        return load_jsonl(path, endpoint, name, max_jobs)
    raise JobFileError(
        str(path),
        None,
        None,
        "unknown file type: use .yaml/.yml for job specs or .jsonl for OpenAI Batch files",
    )


def find_duplicate(jobs: Sequence[JobSpec] | Iterator[JobSpec]) -> JobSpec | None:
    """The first job whose key repeats an earlier one (used after a unique violation)."""
    seen: set[str] = set()
    for job in jobs:
        if job.key in seen:
            return job
        seen.add(job.key)
    return None
