"""The local model's Batch API: ``/v1/files`` and ``/v1/batches`` as OpenAI documents them.

This module owns the batch lifecycle and the routes around it. A created batch runs as a
background task (anyio, in a portal thread of its own, so it lives beside any server or
in-process client): ``validating`` (``batchinput.scan_input``) -> ``in_progress`` (each
line through the same :class:`LocalModelService` as the synchronous routes, in a shuffled
order, as OpenAI does not keep the input order) -> ``finalizing`` -> ``completed``, or
``failed`` (validation errors in ``errors.data``), ``expired`` (the done part in the output
file, the rest ``batch_expired`` in the error file) or ``cancelling`` -> ``cancelled``
(likewise ``batch_cancelled``). A cancel stops the task at the next line.

Files and batch records live on disk (a temporary directory unless ``BatchOptions.dir``
names one): output files are written line by line as the batch runs, so memory does not
grow with the batch. Test knobs (:class:`BatchOptions`): the turnaround time, partial
expiry, injected per-line errors, forced validation failures, the limits, and a log of
every executed line.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import tempfile
import threading
import time
from concurrent.futures import Future
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from runner.localmodel.batchinput import (
    BATCH_ENDPOINTS,
    ScannedInput,
    execute_line,
    injected_error_line,
    read_line,
    resume_partial,
    scan_input,
    unprocessed_line,
)
from runner.localmodel.files import FileStore, Upload, not_found
from runner.localmodel.params import RequestError

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from runner.localmodel.service import LocalModelService

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_REQUESTS", "BatchEngine", "BatchOptions"]

DEFAULT_MAX_REQUESTS = 50_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
COMPLETION_WINDOW_S = 24 * 3600
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
_SAVE_EVERY = 1000  # lines between two writes of a running batch's counts to disk


@dataclass(frozen=True)
class BatchOptions:
    """The local Batch API's knobs; each is a ``runner serve --batch-*`` flag and a
    ``batch_*`` key of a ``type = "local"`` endpoint. Bad values raise ValueError."""

    dir: str | None = None  # files and batch records; None: a temp dir removed at close
    turnaround_ms: float = 100.0  # a batch stays in_progress at least this long
    expire_fraction: float = 0.0  # share of lines left unprocessed: the batch ends expired
    line_error_rate: float = 0.0  # share of lines answered 500 in the error file
    fail_validation: str | None = None  # "code" or "code: message": every batch fails so
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_bytes: int = DEFAULT_MAX_BYTES
    log: str | None = None  # file that gets one JSON line per executed batch line

    def __post_init__(self) -> None:
        if not (math.isfinite(self.turnaround_ms) and self.turnaround_ms >= 0):
            raise ValueError(f"batch_turnaround_ms must be >= 0, got {self.turnaround_ms!r}")
        for name in ("expire_fraction", "line_error_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"batch_{name} must be a number from 0 to 1, got {value!r}")
        for name in ("max_requests", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"batch_{name} must be at least 1, got {getattr(self, name)}")
        if self.fail_validation is not None and not self.fail_validation.split(":")[0].strip():
            raise ValueError("batch_fail_validation must start with an error code")


@dataclass
class _Batch:
    card: dict[str, Any]  # what GET /v1/batches/{id} shows
    created_ns: int
    shuffle_seed: int
    cancel: bool = False
    future: Future[None] | None = field(default=None, repr=False)
    lock_fd: int | None = None  # flock held while this process runs the batch
    unspawned: bool = False  # to be started in the portal (never under the engine's lock)


def _page(items: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": more,
    }


def _query(path: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(path.partition("?")[2]).items()}


def _limit(query: dict[str, str]) -> int:
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 10_000:
        raise RequestError("limit must be an integer from 1 to 10000.", "limit")
    return limit


class BatchEngine:
    """Files, batches and their background tasks for one :class:`LocalModelService`."""

    def __init__(self, service: LocalModelService, options: BatchOptions) -> None:
        self._service = service
        self._options = options
        self._tmp = None if options.dir else tempfile.TemporaryDirectory(prefix="runner-batch-")
        root = Path(options.dir) if options.dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.files = FileStore(root)
        self._dir = root / "batches"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        seed = service.noise_seed
        self._line_rng = random.Random(None if seed is None else f"batch-lines:{seed}")
        self._shuffle_rng = random.Random(None if seed is None else f"batch-shuffle:{seed}")
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._portal_lock = threading.Lock()
        self.resume()

    # -- routes -------------------------------------------------------------------------

    def upload(self, content_type: str | None) -> Upload:
        """A streaming ``POST /v1/files``: feed the body, then ``finish``."""
        return Upload(self.files, content_type)

    def handle(
        self, method: str, route: str, path: str, body: bytes, content_type: str | None
    ) -> dict[str, Any] | Path:
        """Answer a ``/files…`` or ``/batches…`` request (``route`` without ``/v1`` and
        query); a Path is a file's content to stream."""
        from runner.localmodel.service import decode_json, require_method

        parts = route.strip("/").split("/")
        query = _query(path)
        if parts[0] == "files":
            if len(parts) == 1:
                if method == "POST":
                    upload = self.upload(content_type)
                    upload.feed(body)
                    return upload.finish().card()
                require_method(method, "GET", path)
                files, more = self.files.page(
                    purpose=query.get("purpose"),
                    limit=_limit(query | {"limit": query.get("limit", "10000")}),
                    after=query.get("after"),
                    descending=query.get("order", "desc") != "asc",
                )
                return _page([f.card() for f in files], more)
            if len(parts) == 2:
                if method == "DELETE":
                    return self.files.delete(parts[1])
                require_method(method, "GET", path)
                return self.files.get(parts[1]).card()
            if len(parts) == 3 and parts[2] == "content":
                require_method(method, "GET", path)
                self.files.get(parts[1])
                return self.files.data_path(parts[1])
        elif parts[0] == "batches":
            if len(parts) == 1:
                if method == "POST":
                    return self.create(decode_json(body))
                require_method(method, "GET", path)
                return self.page(_limit(query), query.get("after"))
            if len(parts) == 2:
                require_method(method, "GET", path)
                return self.retrieve(parts[1])
            if len(parts) == 3 and parts[2] == "cancel":
                require_method(method, "POST", path)
                return self.cancel(parts[1])
        raise RequestError(f"Invalid URL ({method} {path})", status=404)

    def create(self, body: object) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError("The body must be a JSON object.")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise RequestError("Missing required parameter: 'input_file_id'.", "input_file_id")
        if self.files.get(file_id).purpose != "batch":
            raise RequestError(f"File {file_id} was not uploaded for 'batch'.", "input_file_id")
        endpoint = body.get("endpoint")
        if endpoint not in BATCH_ENDPOINTS:
            raise RequestError(
                f"Invalid endpoint {endpoint!r}; this server batches {', '.join(BATCH_ENDPOINTS)}.",
                "endpoint",
            )
        if body.get("completion_window") != "24h":
            raise RequestError("completion_window must be '24h'.", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and len(metadata) <= 16
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise RequestError("metadata must map up to 16 strings to strings.", "metadata")
        now = time.time_ns()
        created = now // 1_000_000_000
        card: dict[str, Any] = {
            "id": "batch_" + secrets.token_hex(12),
            "object": "batch",
            "endpoint": endpoint,
            "model": None,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": None,
            "expires_at": created + COMPLETION_WINDOW_S,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "usage": None,
            "metadata": metadata,
        }
        with self._lock:
            batch = _Batch(card, now, self._shuffle_rng.getrandbits(63))
            self._save(batch)
            fd = self._claim(card["id"])
            assert fd is not None  # a new batch: nobody else knows it
            self._start(batch, fd)
            shown = dict(card)
        self._spawn()
        return shown

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self._batches.get(batch_id) or self._take_over(batch_id)
            shown: dict[str, Any] = json.loads(json.dumps(batch.card))
        self._spawn()
        return shown

    def cancel(self, batch_id: str) -> dict[str, Any]:
        try:
            return self._cancel(batch_id)
        finally:
            self._spawn()

    def _cancel(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self._batches.get(batch_id) or self._take_over(batch_id)
            status = batch.card["status"]
            if batch_id not in self._batches and status in ACTIVE:
                # Another live process runs it: it sees the marker at its next line.
                (self._dir / f"{batch_id}.cancel").touch()
                return batch.card | {"status": "cancelling", "cancelling_at": int(time.time())}
            if status in ("validating", "in_progress", "finalizing"):
                batch.cancel = True
                self._set(batch, "cancelling")
            elif status not in ("cancelling", "cancelled"):
                raise RequestError(
                    f"Cannot cancel a batch with status '{status}'.", status=409, code="conflict"
                )
            return dict(batch.card)

    def page(self, limit: int, after: str | None) -> dict[str, Any]:
        records = {b.card["id"]: (b.created_ns, b.card) for b in self._snapshot()}
        for entry in os.scandir(self._dir):
            batch_id = entry.name.removesuffix(".json")
            if entry.name.endswith(".json") and batch_id not in records:
                try:
                    stored = self._load(batch_id)
                except RequestError:
                    continue
                records[batch_id] = (stored.created_ns, stored.card)
        ordered = [card for _, card in sorted(records.values(), key=lambda r: -r[0])]
        if after is not None:
            ids = [card["id"] for card in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        return _page(ordered[:limit], len(ordered) > limit)

    # -- records ------------------------------------------------------------------------

    def _snapshot(self) -> list[_Batch]:
        with self._lock:
            return [
                _Batch(json.loads(json.dumps(b.card)), b.created_ns, b.shuffle_seed)
                for b in self._batches.values()
            ]

    def _save(self, batch: _Batch) -> None:
        """Write the batch's record (call with the lock held)."""
        record = {"card": batch.card, "created_ns": batch.created_ns, "seed": batch.shuffle_seed}
        partial = self._dir / f"{batch.card['id']}.json.partial"
        partial.write_text(json.dumps(record))
        os.replace(partial, self._dir / f"{batch.card['id']}.json")

    def _load(self, batch_id: str) -> _Batch:
        if not batch_id.startswith("batch_") or "/" in batch_id or "\\" in batch_id:
            raise not_found("batch", batch_id)
        try:
            record = json.loads((self._dir / f"{batch_id}.json").read_text())
        except FileNotFoundError:
            raise not_found("batch", batch_id) from None
        return _Batch(record["card"], record["created_ns"], record["seed"])

    def _set(self, batch: _Batch, status: str, **fields: Any) -> None:
        """Move the batch to ``status`` and stamp it (call with the lock held)."""
        batch.card["status"] = status
        batch.card[f"{status}_at"] = int(time.time())
        batch.card.update(fields)
        self._save(batch)

    def _transition(self, batch: _Batch, status: str, **fields: Any) -> None:
        with self._lock:
            self._set(batch, status, **fields)

    def _take_over(self, batch_id: str) -> _Batch:
        """The stored batch; one whose process is gone (its lock is free) is resumed here,
        as a provider keeps running batches whatever happens to its clients (call with the
        lock held)."""
        batch = self._load(batch_id)
        if batch.card["status"] in ACTIVE and (fd := self._claim(batch_id)) is not None:
            batch = self._load(batch_id)  # again under the flock: its owner may just have ended
            if batch.card["status"] in ACTIVE:
                self._start(batch, fd)
            else:
                os.close(fd)
        return batch

    def resume(self) -> None:
        """Run every batch of the directory that no live process runs (a server or client
        that was killed left it): a provider keeps its batches running."""
        with self._lock:
            for entry in os.scandir(self._dir):
                batch_id = entry.name.removesuffix(".json")
                if entry.name.endswith(".json") and batch_id not in self._batches:
                    self._take_over(batch_id)
        self._spawn()

    def _claim(self, batch_id: str) -> int | None:
        """The batch's flock (a file descriptor), or None if a live process holds it."""
        import fcntl

        fd = os.open(self._dir / f"{batch_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _start(self, batch: _Batch, fd: int) -> None:
        """Run ``batch`` here, holding its flock ``fd`` (call with the lock held)."""
        batch.lock_fd = fd
        batch.unspawned = True
        self._batches[batch.card["id"]] = batch

    def _spawn(self) -> None:
        """Start the tasks of batches ``_start`` took on. Never under the engine's lock: a
        running task may wait for the lock, and the portal for that task."""
        with self._lock:
            batches = [b for b in self._batches.values() if b.unspawned]
            for batch in batches:
                batch.unspawned = False
        for batch in batches:
            batch.future = self._start_portal().start_task_soon(self._run, batch)

    # -- the background task ------------------------------------------------------------

    def _start_portal(self) -> BlockingPortal:
        with self._portal_lock:
            if self._portal is None:
                from anyio.from_thread import start_blocking_portal

                self._portal_cm = start_blocking_portal(name="runner-local-batches")
                self._portal = self._portal_cm.__enter__()
            return self._portal

    async def _run(self, batch: _Batch) -> None:
        try:
            await self._process(batch)
        except Exception as exc:  # a bug fails the batch, as a provider would
            error = {"code": "server_error", "message": repr(exc), "param": None, "line": None}
            self._transition(batch, "failed", errors={"object": "list", "data": [error]})
        finally:
            if batch.lock_fd is not None:
                os.close(batch.lock_fd)  # releases the flock
                batch.lock_fd = None

    def _check_cancel(self, batch: _Batch) -> bool:
        """Whether the batch is to stop; picks up a cancel another process asked for."""
        if not batch.cancel and (self._dir / f"{batch.card['id']}.cancel").exists():
            with self._lock:
                batch.cancel = True
                if batch.card["status"] != "cancelling":
                    self._set(batch, "cancelling")
        return batch.cancel

    async def _pause(self, batch: _Batch, until: float) -> None:
        import anyio

        # A poll, not an Event: cancel() sets the flag from the server's or client's thread.
        while not self._check_cancel(batch) and (left := until - time.monotonic()) > 0:  # noqa: ASYNC110
            await anyio.sleep(min(left, 0.02))

    async def _validate(self, batch: _Batch, path: Path) -> ScannedInput | None:
        """The scanned input, or None when the batch failed validation."""
        import anyio.to_thread

        options, card = self._options, batch.card
        if options.fail_validation is not None:
            code, _, message = options.fail_validation.partition(":")
            scanned = ScannedInput()
            scanned.fail(code.strip(), message.strip() or code.strip())
        else:
            scanned = await anyio.to_thread.run_sync(
                scan_input, path, card["endpoint"], options.max_requests, options.max_bytes
            )
        if scanned.errors:
            self._transition(batch, "failed", errors={"object": "list", "data": scanned.errors})
            return None
        return scanned

    async def _process(self, batch: _Batch) -> None:
        import anyio.lowlevel
        import numpy as np

        options, card, batch_id = self._options, batch.card, batch.card["id"]
        input_path = self.files.data_path(card["input_file_id"])
        scanned = await self._validate(batch, input_path)
        if scanned is None:
            return
        offsets, total = scanned.offsets, len(scanned.offsets)
        paths = {
            "output_file_id": self.files.dir / f"{batch_id}.output.partial",
            "error_file_id": self.files.dir / f"{batch_id}.errors.partial",
        }
        # A batch taken over from a process that died keeps the lines it finished.
        done_ids, completed, failed = resume_partial(*paths.values())
        counts = {"total": total, "completed": completed, "failed": failed}
        with self._lock:
            card.update(model=scanned.model, request_counts=counts)
            batch.cancel = batch.cancel or card["status"] == "cancelling"
            if not batch.cancel:
                self._set(batch, "in_progress")
        started = time.monotonic()
        await self._pause(batch, started + options.turnaround_ms / 2000)
        # An int64 array, not a list: 8 bytes a line, whatever the batch's size.
        order = np.random.default_rng(batch.shuffle_seed).permutation(total)
        cut = total - math.ceil(total * options.expire_fraction)
        with ExitStack() as stack:
            source = stack.enter_context(input_path.open("rb"))
            # Unbuffered: a line written is kept even if the process is killed next.
            out = stack.enter_context(paths["output_file_id"].open("ab", buffering=0))
            err = stack.enter_context(paths["error_file_id"].open("ab", buffering=0))
            done = 0
            while done < cut and not self._stopping(batch, done):
                record = read_line(source, offsets[int(order[done])])
                done += 1
                if record["custom_id"] in done_ids:
                    continue
                ok, line = self._execute(record)
                (out if ok else err).write(line)
                self._log(batch_id, record["custom_id"])
                with self._lock:
                    counts["completed" if ok else "failed"] += 1
                    card["request_counts"] = dict(counts)
                    if done % _SAVE_EVERY == 0:
                        self._save(batch)
                await anyio.lowlevel.checkpoint()
            await self._pause(batch, started + options.turnaround_ms / 1000)
            with self._lock:
                why = "cancelled" if batch.cancel else "expired" if done < total else None
                if why != "cancelled":
                    self._set(batch, "finalizing")
            for index in order[done:] if why else ():
                custom_id = read_line(source, offsets[int(index)])["custom_id"]
                if custom_id not in done_ids:
                    err.write(unprocessed_line(custom_id, why or ""))
        ids = {key: self._publish(path, key) for key, path in paths.items()}
        with self._lock:
            self._set(batch, "cancelled" if batch.cancel else why or "completed", **ids)
        (self._dir / f"{batch_id}.cancel").unlink(missing_ok=True)

    def _stopping(self, batch: _Batch, done: int) -> bool:
        # The marker of a cancel from another process is looked for every 64 lines.
        return batch.cancel or (done % 64 == 0 and self._check_cancel(batch))

    def _publish(self, path: Path, key: str) -> str | None:
        """A finished result file as a file of the store (None if it is empty)."""
        if path.stat().st_size == 0:
            path.unlink()
            return None
        file_id = "file-" + secrets.token_hex(12)
        name = "batch_output.jsonl" if key == "output_file_id" else "batch_errors.jsonl"
        self.files.adopt(path, file_id, name, "batch_output")
        return file_id

    def _execute(self, record: dict[str, Any]) -> tuple[bool, bytes]:
        rate = self._options.line_error_rate
        if rate > 0:
            with self._lock:
                failed = self._line_rng.random() < rate
            if failed:
                return False, injected_error_line(record["custom_id"])
        try:
            return execute_line(self._service, record)
        except (KeyError, TypeError, ValueError) as exc:
            raise RuntimeError(f"line {record.get('custom_id')!r}: {exc!r}") from exc

    def _log(self, batch_id: str, custom_id: str) -> None:
        if self._options.log is None:
            return
        line = json.dumps({"batch_id": batch_id, "custom_id": custom_id, "time": time.time()})
        fd = os.open(self._options.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())  # one write: lines of processes never mix
        finally:
            os.close(fd)

    def close(self) -> None:
        """Stop every running batch and the portal; remove a temporary directory."""
        with self._lock:
            futures = [b.future for b in self._batches.values() if b.future is not None]
        for future in futures:
            future.cancel()
        with self._portal_lock:
            if self._portal_cm is not None:
                self._portal_cm.__exit__(None, None, None)
                self._portal_cm = self._portal = None
        if self._tmp is not None:
            self._tmp.cleanup()
