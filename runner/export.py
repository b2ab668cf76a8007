"""`runner export`: one finished round of a batch as OpenAI Batch output, JSON Lines or CSV.

Rows come from the ``run_results`` view through a read-only connection
(runner.db.readonly), a chunk at a time, and are written as they come: memory stays
flat however big the round. ``-o FILE`` is written to a temporary file in the same
folder and renamed over FILE once complete, so an error never leaves half a file.

``openai-batch`` lines are what OpenAI's Batch API writes to its output and error
files: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``. A success carries the stored response body, whatever its kind (a chat
completion, a Responses API response object, an embeddings list with its vectors
restored from ``runs.embedding``); a failure with an HTTP
status carries that status, the server's ``x-request-id`` and the error body it sent
(or, when that was not JSON, an OpenAI-shaped one with its message); a failure without
one (timeout, connection error, unusable response) has ``response: null`` and
``error: {"code", "message"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from runner.errors import DatabaseError, NotFoundError, QueryError, RunnerError
from runner.kinds import vectors
from runner.tabular import write_csv, write_jsonl

if TYPE_CHECKING:
    from runner.db.readonly import ReadOnly

# The database drivers are imported by ``export`` itself: `runner --help` reads FORMATS.

FORMATS = ("openai-batch", "jsonl", "csv")

# jsonl and csv: these run_results columns, in this order (``response`` is what
# openai-batch is for). ``outputs`` is a JSON list in jsonl, JSON text in csv.
COLUMNS = (
    "run_id",
    "batch_id",
    "batch_name",
    "round_number",
    "job_key",
    "endpoint",
    "model",
    "response_model",
    "seed",
    "system_fingerprint",
    "request_hash",
    "state",
    "attempts",
    "finish_reason",
    "output",
    "outputs",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms",
    "error_type",
    "error_status",
    "error_message",
    "provider_request_id",
    "reused_from_run_id",
    "started_at",
    "finished_at",
    "api",
    "response_status",
    "incomplete_details",
    "service_tier",
    "cached_tokens",
    "reasoning_tokens",
    "embedding_dimensions",
    "embedding",
)
BATCH_COLUMNS = (
    "run_id",
    "job_key",
    "state",
    "response",
    "provider_request_id",
    "error_type",
    "error_status",
    "error_message",
    "error_body",
    "embedding",
    "embedding_dimensions",
)
CANCELLED_MESSAGE = "This request was not executed: its run was cancelled."

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """The round an export reads."""

    batch_id: int
    batch_name: str
    round_id: int
    round_number: int

    def __str__(self) -> str:
        return f"batch {self.batch_id} ({self.batch_name}) round {self.round_number}"


@dataclass(frozen=True)
class Exported:
    target: Target
    fmt: str
    lines: int  # runs written (CSV: plus one header line)
    path: Path | None


# ---------------------------------------------------------------- OpenAI Batch lines


def batch_line(row: Mapping[str, Any]) -> dict[str, Any]:
    """One run (``BATCH_COLUMNS`` of run_results) as an OpenAI Batch API output line."""
    line: dict[str, Any] = {
        "id": f"batch_req_{row['run_id']}",
        "custom_id": row["job_key"],
        "response": None,
        "error": None,
    }
    state = row["state"]
    status = row["error_status"]
    if state == "succeeded":
        body = json.loads(row["response"])
        if row.get("embedding") is not None:  # the vectors back where the API sent them
            body = vectors.restored(body, bytes(row["embedding"]), row["embedding_dimensions"])
        line["response"] = {
            "status_code": 200,
            "request_id": row["provider_request_id"],
            "body": body,
        }
    elif state == "failed" and status is not None and status >= 400:
        line["response"] = {
            "status_code": status,
            "request_id": row["provider_request_id"],
            "body": _error_body(row),
        }
    elif state == "failed":
        line["error"] = {
            "code": row["error_type"] or "failed",
            "message": row["error_message"] or "",
        }
    elif state == "cancelled":
        line["error"] = {"code": "batch_cancelled", "message": CANCELLED_MESSAGE}
    else:
        raise ValueError(f"run {row['run_id']} is {state}, not finished")
    return line


def _error_body(row: Mapping[str, Any]) -> Any:
    """The body the server sent with the error, if it was JSON; else an OpenAI-shaped one
    (OpenAI's own error bodies always are) with the message it said."""
    stored = row["error_body"]
    if stored:
        try:
            return json.loads(stored)
        except ValueError:
            pass
    error_type = row["error_type"]
    return {
        "error": {
            "message": row["error_message"] or "",
            "type": error_type,
            "param": None,
            "code": error_type,
        }
    }


def _write_batch_lines(out: TextIO, rows: Iterator[Sequence[Any]]) -> int:
    count = 0
    for row in rows:
        line = batch_line(dict(zip(BATCH_COLUMNS, row, strict=True)))
        out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
        count += 1
    return count


def _with_outputs_parsed(
    rows: Iterator[Sequence[Any]], *, as_text: bool = False
) -> Iterator[Sequence[Any]]:
    """Rows with ``outputs`` parsed (unless ``as_text``) and ``embedding`` as a list of
    vectors (JSON text when ``as_text``, for CSV)."""
    index, vectors_at = COLUMNS.index("outputs"), COLUMNS.index("embedding")
    dimensions_at = COLUMNS.index("embedding_dimensions")
    for row in rows:
        values = list(row)
        if values[index] is not None and not as_text:
            values[index] = json.loads(values[index])
        if values[vectors_at] is not None:
            found = vectors.unpack(bytes(values[vectors_at]), values[dimensions_at])
            values[vectors_at] = json.dumps(found) if as_text else found
        yield values


# ---------------------------------------------------------------- reading


def _one(ro: ReadOnly, sql: str, *params: Any) -> Sequence[Any] | None:
    first = None
    for row in ro.stream(sql.replace("?", ro.placeholder), params).rows:
        first = first or row
    return first


def check_schema(ro: ReadOnly) -> None:
    """Refuse a database whose schema is not the one this version reads."""
    try:
        row = _one(ro, "SELECT version_num FROM alembic_version")
    except QueryError:
        row = None
    from runner.db.engine import head_revision

    head = head_revision()
    if row is None:
        raise DatabaseError("this database has no seed-runner schema: nothing to export")
    if row[0] != head:
        raise DatabaseError(
            f"the database is at schema revision {row[0]}, this seed-runner reads {head}; "
            "run `runner db upgrade`"
        )


def resolve(ro: ReadOnly, batch_ref: str, round_number: int | None) -> Target:
    """The batch (id, or the latest batch of that name) and round (default: its latest)."""
    if batch_ref.isdigit():
        batch = _one(ro, "SELECT id, name FROM batches WHERE id = ?", int(batch_ref))
    else:
        batch = _one(
            ro, "SELECT id, name FROM batches WHERE name = ? ORDER BY id DESC LIMIT 1", batch_ref
        )
    if batch is None:
        raise NotFoundError(
            f"no batch {batch_ref!r} (give a batch id or name; see `runner status`)"
        )
    batch_id, name = int(batch[0]), str(batch[1])
    if round_number is None:
        found = _one(
            ro,
            "SELECT id, number FROM rounds WHERE batch_id = ? ORDER BY number DESC LIMIT 1",
            batch_id,
        )
    else:
        found = _one(
            ro, "SELECT id, number FROM rounds WHERE batch_id = ? AND number = ?", batch_id,
            round_number,
        )  # fmt: skip
    if found is None:
        span = _one(ro, "SELECT min(number), max(number) FROM rounds WHERE batch_id = ?", batch_id)
        if span is None or span[0] is None:
            have = "it has no rounds"
        elif span[0] == span[1]:
            have = f"it has round {span[0]}"
        else:
            have = f"it has rounds {span[0]}-{span[1]}"
        raise NotFoundError(f"batch {batch_id} ({name}) has no round {round_number} ({have})")
    target = Target(batch_id, name, int(found[0]), int(found[1]))
    unfinished = _one(
        ro,
        "SELECT count(*) FROM runs WHERE round_id = ? AND state IN ('queued', 'running')",
        target.round_id,
    )
    if unfinished and unfinished[0]:
        raise RunnerError(
            f"{target} has {unfinished[0]} runs queued or running: export it when it is done "
            "(`runner work --burst`), or a finished round with --round N "
            "(`runner sql` reads unfinished rounds)"
        )
    return target


def write_round(ro: ReadOnly, target: Target, fmt: str, out: TextIO) -> int:
    """Stream the runs of ``target`` in job order to ``out``; returns how many."""
    columns = BATCH_COLUMNS if fmt == "openai-batch" else COLUMNS
    sql = (
        f"SELECT {', '.join(columns)} FROM run_results WHERE round_id = {ro.placeholder} "
        "ORDER BY job_id"
    )
    rows = ro.stream(sql, (target.round_id,)).rows
    if fmt == "openai-batch":
        return _write_batch_lines(out, rows)
    if fmt == "jsonl":
        return write_jsonl(out, COLUMNS, _with_outputs_parsed(rows))
    if fmt == "csv":
        return write_csv(out, COLUMNS, _with_outputs_parsed(rows, as_text=True))
    raise ValueError(f"unknown export format {fmt!r}")


# ---------------------------------------------------------------- writing


def _file_mode(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_writable(path: Path) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if path.is_dir():
        raise RunnerError(f"cannot write {path}: it is a directory; give a file name with -o")
    if not path.parent.is_dir():
        raise RunnerError(f"cannot write {path}: no folder {path.parent}; create it first")


def write_atomically(path: Path, write: Callable[[TextIO], T]) -> T:
    """Write ``path`` through a temporary file renamed over it once ``write`` returns."""
    check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise RunnerError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            result = write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return result


def export(
    url: str,
    batch_ref: str,
    *,
    round_number: int | None,
    fmt: str,
    path: Path | None,
    stdout: TextIO,
) -> Exported:
    """Export one finished round to ``path`` (atomically) or to ``stdout`` (streamed)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    if path is not None:
        check_writable(path)
    from runner.db.readonly import open_readonly

    with open_readonly(url) as ro:
        check_schema(ro)
        target = resolve(ro, batch_ref, round_number)
        if path is None:
            lines = write_round(ro, target, fmt, stdout)
        else:
            lines = write_atomically(path, lambda out: write_round(ro, target, fmt, out))
    return Exported(target, fmt, lines, path)
