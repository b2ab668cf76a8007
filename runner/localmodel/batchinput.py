"""The local Batch API's input and result lines: validation, one line's execution, the
shapes OpenAI writes to output and error files.

This module owns what happens to one batch's JSONL without any state machine around it:
``scan_input`` validates a whole input file as OpenAI's ``validating`` step does (errors
with their 1-based line numbers) and records where each request line starts, so lines can
be read back in any order without holding the file in memory; ``execute_line`` sends one
line through the same :class:`LocalModelService` as the synchronous routes and returns its
output-file or error-file line.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.localmodel.service import LocalModelService

__all__ = [
    "BATCH_ENDPOINTS",
    "MAX_REPORTED_ERRORS",
    "ScannedInput",
    "execute_line",
    "injected_error_line",
    "read_line",
    "resume_partial",
    "scan_input",
    "unprocessed_line",
]

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
MAX_REPORTED_ERRORS = 100  # errors.data entries of a batch that fails validation

UNPROCESSED = {
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "cancelled": ("batch_cancelled", "This request was not executed: the batch was cancelled."),
}


@dataclass
class ScannedInput:
    """A validated input file: where each request line starts, or why it is refused."""

    offsets: array[int] = field(default_factory=lambda: array("q"))
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, code: str, message: str, line: int | None = None) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": None, "line": line})


def _check_line(scanned: ScannedInput, record: object, number: int, endpoint: str) -> str | None:
    """The line's custom_id if it is a valid request line (errors go to ``scanned``)."""
    if not isinstance(record, dict):
        scanned.fail("invalid_json_line", "This line is not a JSON object.", number)
        return None
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        scanned.fail("missing_custom_id", "Each line needs a non-empty string custom_id.", number)
        return None
    if record.get("method") != "POST":
        scanned.fail("invalid_method", "The method of each request must be 'POST'.", number)
    url = record.get("url")
    if url != endpoint:
        scanned.fail(
            "url_mismatch",
            f"The url {url!r} does not match the batch's endpoint {endpoint!r}.",
            number,
        )
    body = record.get("body")
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str):
        scanned.fail("invalid_body", "The body must be a JSON object naming a model.", number)
    elif scanned.model is None:
        scanned.model = model
    elif model != scanned.model:
        scanned.fail(
            "model_mismatch",
            f"The model {model!r} differs from the batch's model {scanned.model!r}; "
            "all requests of a batch must use the same model.",
            number,
        )
    return custom_id


def scan_input(path: Path, endpoint: str, max_requests: int, max_bytes: int) -> ScannedInput:
    """Validate the input file at ``path`` for a batch on ``endpoint``.

    Memory stays small for any file: per request line one offset and one 8-byte hash of its
    ``custom_id`` (duplicates are found by sorting the hashes).
    """
    scanned = ScannedInput()
    size = path.stat().st_size
    if size > max_bytes:
        scanned.fail(
            "file_too_large",
            f"The input file has {size} bytes; a batch takes at most {max_bytes}.",
        )
        return scanned
    hashes = array("Q")
    with path.open("rb") as handle:
        offset, number = 0, 0
        for raw in handle:
            number += 1
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                message = "This line is not parseable as valid JSON."
                scanned.fail("invalid_json_line", message, number)
                continue
            custom_id = _check_line(scanned, record, number, endpoint)
            if custom_id is not None:
                scanned.offsets.append(start)
                digest = hashlib.blake2b(custom_id.encode(), digest_size=8).digest()
                hashes.append(int.from_bytes(digest, "big"))
    count = len(scanned.offsets)
    if count == 0 and not scanned.errors:
        scanned.fail("empty_file", "The input file has no requests.")
    if count > max_requests:
        scanned.fail(
            "too_many_tasks",
            f"The input file has {count} requests; a batch takes at most {max_requests}.",
        )
    _find_duplicates(scanned, hashes, path)
    return scanned


def _find_duplicates(scanned: ScannedInput, hashes: array[int], path: Path) -> None:
    if len(hashes) < 2:
        return
    import numpy as np

    values = np.frombuffer(hashes, dtype=np.uint64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    repeated = order[1:][ordered[1:] == ordered[:-1]]  # every later occurrence
    if repeated.size == 0:
        return
    numbers = _line_numbers(path, {int(scanned.offsets[i]) for i in repeated.tolist()})
    for index in sorted(repeated.tolist()):
        scanned.fail(
            "duplicate_custom_id",
            "The custom_id for this request is a duplicate of another request. The "
            "custom_id parameter must be unique for each request in a batch.",
            numbers[int(scanned.offsets[index])],
        )


def _line_numbers(path: Path, offsets: set[int]) -> dict[int, int]:
    found, offset = {}, 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if offset in offsets:
                found[offset] = number
            offset += len(raw)
    return found


def read_line(handle: IO[bytes], offset: int) -> dict[str, Any]:
    handle.seek(offset)
    record: dict[str, Any] = json.loads(handle.readline())
    return record


def _request_id() -> str:
    return "batch_req_" + secrets.token_hex(16)


def _line(custom_id: str, response: bytes, error: dict[str, Any] | None) -> bytes:
    head = json.dumps(
        {"id": _request_id(), "custom_id": custom_id}, ensure_ascii=False, separators=(",", ":")
    )
    tail = json.dumps(error, ensure_ascii=False)
    return head[:-1].encode() + b',"response":' + response + b',"error":' + tail.encode() + b"}\n"


def execute_line(service: LocalModelService, record: dict[str, Any]) -> tuple[bool, bytes]:
    """Run one request line: (whether it succeeded, its output- or error-file line)."""
    body = json.dumps(record["body"]).encode()
    answer = service.handle("POST", record["url"], body)
    response = (
        b'{"status_code":%d,"request_id":%s,"body":'
        % (answer.status, json.dumps(answer.headers.get("x-request-id", _request_id())).encode())
        + answer.body
        + b"}"
    )
    return answer.status == 200, _line(record["custom_id"], response, None)


def injected_error_line(custom_id: str) -> bytes:
    """The error-file line of a request the server failed on purpose (500, as OpenAI's)."""
    error = {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    response = json.dumps(
        {"status_code": 500, "request_id": "req_" + secrets.token_hex(16), "body": {"error": error}}
    ).encode()
    return _line(custom_id, response, None)


def unprocessed_line(custom_id: str, why: str) -> bytes:
    """The error-file line of a request never executed (``why``: expired or cancelled)."""
    code, message = UNPROCESSED[why]
    return _line(custom_id, b"null", {"code": code, "message": message})


def _kept_lines(path: Path) -> list[dict[str, Any]]:
    """The executed lines of a partial result file; cuts off a torn last line and the
    unprocessed lines (written only at the end) so the file can be appended to again."""
    if not path.exists():
        return []
    kept, end = [], 0
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            record = json.loads(raw)
            if record.get("error") is not None:
                break
            kept.append(record)
            end += len(raw)
    with path.open("r+b") as handle:
        handle.truncate(end)
    return kept


def resume_partial(output: Path, errors: Path) -> tuple[set[str], int, int]:
    """What a batch's partial output and error files already hold: the custom_ids done,
    and how many succeeded and failed."""
    succeeded, failed = _kept_lines(output), _kept_lines(errors)
    done = {line["custom_id"] for line in succeeded} | {line["custom_id"] for line in failed}
    return done, len(succeeded), len(failed)
