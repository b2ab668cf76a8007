"""The local Batch API's files: uploads and batch results on disk, never in memory.

This module owns ``/v1/files``' storage: each file is ``files/<id>.data`` beside its
metadata ``files/<id>.json`` (OpenAI's ``FileObject``) under the store's directory, so
several processes sharing a directory (``batch_dir``) see the same files. Uploads come as
``multipart/form-data`` and are parsed as they stream in (:class:`Upload`): the file part
goes straight to disk, whatever its size.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from runner.localmodel.params import RequestError

__all__ = ["FileStore", "StoredFile", "Upload", "not_found"]

_FIELD_LIMIT = 4096  # bytes of a non-file form field (purpose, expires_after…)


def not_found(kind: str, object_id: str) -> RequestError:
    return RequestError(f"No such {kind}: '{object_id}'", "id", status=404, code="not_found")


@dataclass(frozen=True)
class StoredFile:
    """One file's metadata, as OpenAI's ``FileObject`` shows it."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    created_ns: int  # orders the list; not shown

    def card(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """Files under ``root/files``; safe to share between processes (writes are atomic)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "files"
        self.dir.mkdir(parents=True, exist_ok=True)

    def data_path(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.data"

    def adopt(self, path: Path, file_id: str, filename: str, purpose: str) -> StoredFile:
        """Make the finished file at ``path`` (moved, same filesystem) the file ``file_id``."""
        now = time.time_ns()
        stored = StoredFile(
            id=file_id,
            bytes=path.stat().st_size,
            created_at=now // 1_000_000_000,
            filename=filename,
            purpose=purpose,
            created_ns=now,
        )
        os.replace(path, self.data_path(file_id))
        meta = self.dir / f"{file_id}.json.partial"
        meta.write_text(json.dumps(asdict(stored)))
        os.replace(meta, self.dir / f"{file_id}.json")
        return stored

    def get(self, file_id: str) -> StoredFile:
        if not file_id.startswith("file-") or "/" in file_id or "\\" in file_id:
            raise not_found("file", file_id)
        try:
            return StoredFile(**json.loads((self.dir / f"{file_id}.json").read_text()))
        except FileNotFoundError:
            raise not_found("file", file_id) from None

    def page(
        self, *, purpose: str | None, limit: int, after: str | None, descending: bool
    ) -> tuple[list[StoredFile], bool]:
        """A page of files in creation order, and whether more follow."""
        files = []
        for entry in os.scandir(self.dir):
            if entry.name.endswith(".json"):
                try:
                    files.append(StoredFile(**json.loads(Path(entry.path).read_text())))
                except FileNotFoundError:  # deleted meanwhile
                    continue
        files = [f for f in files if purpose is None or f.purpose == purpose]
        files.sort(key=lambda f: (f.created_ns, f.id), reverse=descending)
        if after is not None:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        return files[:limit], len(files) > limit

    def delete(self, file_id: str) -> dict[str, Any]:
        self.get(file_id)
        (self.dir / f"{file_id}.json").unlink(missing_ok=True)
        self.data_path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}


class Upload:
    """A ``multipart/form-data`` upload (``POST /v1/files``) parsed as it streams in.

    ``feed`` each chunk of the body, then ``finish``: the ``file`` part is written to the
    store as it arrives; the other fields (``purpose``) are kept, small, in memory.
    """

    def __init__(self, store: FileStore, content_type: str | None) -> None:
        from python_multipart import MultipartParser
        from python_multipart.multipart import parse_options_header

        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise RequestError(
                "Uploads must be multipart/form-data with a 'file' and a 'purpose' field."
            )
        self._store = store
        self._partial = store.dir / f"upload-{secrets.token_hex(8)}.partial"
        self._handle: IO[bytes] | None = None
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._field: str | None = None
        self._value = bytearray()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._parse = parse_options_header
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _part_begin(self) -> None:
        self._headers = {}
        self._field = None
        self._value = bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = self._parse(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "file" and b"filename" in options:
            if self._handle is not None:
                raise RequestError("Send one 'file' per upload.", "file")
            self.filename = options[b"filename"].decode("utf-8", "replace")
            self._handle = self._partial.open("wb")
        else:
            self._field = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is None and self._handle is not None and not self._handle.closed:
            self._handle.write(data[start:end])
        elif self._field is not None:
            self._value.extend(data[start:end])
            if len(self._value) > _FIELD_LIMIT:
                raise RequestError(f"The form field {self._field!r} is too long.", self._field)

    def _part_end(self) -> None:
        if self._field is not None:
            self.fields[self._field] = self._value.decode("utf-8", "replace")
        elif self._handle is not None:
            self._handle.close()

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except RequestError:
            self.discard()
            raise
        except Exception as exc:  # python_multipart's parse errors
            self.discard()
            raise RequestError(f"The multipart body could not be parsed: {exc}") from None

    def finish(self) -> StoredFile:
        """The stored file; RequestError (nothing stored) if the form is incomplete."""
        try:
            self._parser.finalize()
            purpose = self.fields.get("purpose")
            if purpose is None:
                raise RequestError("Missing required parameter: 'purpose'.", "purpose")
            if purpose != "batch":
                raise RequestError(
                    f"Invalid purpose {purpose!r}: this server stores files for 'batch' only.",
                    "purpose",
                )
            if self._handle is None or self.filename is None or not self._handle.closed:
                raise RequestError("Missing required parameter: 'file'.", "file")
            file_id = "file-" + secrets.token_hex(12)
            return self._store.adopt(self._partial, file_id, self.filename, purpose)
        finally:
            self.discard()

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._partial.unlink(missing_ok=True)
