"""The OpenAI Batch API through the SDK, and its result lines translated like responses.

``BatchAPI`` uploads an input file (``client.files.create``), creates a provider batch
(``client.batches.create``, with metadata naming our round and chunk), finds one by that
metadata (``client.batches.list``: a worker that died between creating it and recording
its id), polls, cancels, and streams a result file line by line (the SDK's streaming
response: memory does not grow with the file). Every SDK error becomes an
``EndpointError`` through the same translation as a synchronous request.

``line_result`` reads one line of an output or error file: a ``Completion`` for a 200,
else an ``EndpointError`` classified as the same HTTP error would be (a 429 or 5xx line
is retryable, a 400 is not); a line the provider could not execute in time
(``batch_expired``) or at all (``batch_cancelled``) is retryable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import openai

from runner.endpoints import Completion, EndpointError, ErrorKind
from runner.endpoints.client import (
    ERROR_BODY_LIMIT,
    EndpointClient,
    _connection_error,
    _status_error,
    completion_from,
    status_error,
)

T = TypeVar("T")

CHAT_URL = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# A line the provider never executed: retryable whatever its HTTP status says.
NOT_EXECUTED = frozenset({"batch_expired", "batch_cancelled"})
LIST_PAGE = 100


@dataclass(frozen=True)
class ProviderBatch:
    """What the provider says of one batch."""

    id: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    completed: int | None
    failed: int | None
    total: int | None
    metadata: dict[str, str]
    errors: str | None  # a failed batch's ``errors`` (validation), as JSON text
    created_at: float | None = None  # Unix seconds

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


def _batch(found: Any) -> ProviderBatch:
    counts = getattr(found, "request_counts", None)
    errors = getattr(found, "errors", None)
    data = getattr(errors, "data", None) if errors is not None else None
    return ProviderBatch(
        id=str(found.id),
        status=str(found.status),
        input_file_id=getattr(found, "input_file_id", None),
        output_file_id=getattr(found, "output_file_id", None),
        error_file_id=getattr(found, "error_file_id", None),
        completed=getattr(counts, "completed", None),
        failed=getattr(counts, "failed", None),
        total=getattr(counts, "total", None),
        metadata=dict(getattr(found, "metadata", None) or {}),
        errors=json.dumps([e.model_dump(exclude_none=True) for e in data]) if data else None,
        created_at=getattr(found, "created_at", None),
    )


class BatchAPI:
    """One endpoint's Batch API, over its endpoint client's SDK client."""

    def __init__(self, client: EndpointClient) -> None:
        self._client = client
        self._sdk = client.sdk
        self._redact = client.redact

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except openai.APIConnectionError as exc:
            raise _connection_error(exc, self._client.config.timeout, self._redact) from None
        except openai.APIStatusError as exc:
            raise _status_error(exc, self._redact) from None

    async def upload(self, path: Path) -> str:
        """Upload an input file (read from disk as it is sent); its file id."""

        async def go() -> Any:
            with path.open("rb") as handle:
                return await self._sdk.files.create(
                    file=(path.name, handle, "application/jsonl"), purpose="batch"
                )

        return str((await self._call(go)).id)

    async def create(self, file_id: str, metadata: dict[str, str]) -> ProviderBatch:
        created = await self._call(
            lambda: self._sdk.batches.create(
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata=metadata,
            )
        )
        return _batch(created)

    async def retrieve(self, batch_id: str) -> ProviderBatch:
        return _batch(await self._call(lambda: self._sdk.batches.retrieve(batch_id)))

    async def cancel(self, batch_id: str) -> ProviderBatch:
        return _batch(await self._call(lambda: self._sdk.batches.cancel(batch_id)))

    async def find(
        self, metadata: dict[str, str], file_id: str, *, since: float | None = None
    ) -> ProviderBatch | None:
        """The batch whose metadata holds ``metadata`` or whose input is ``file_id``;
        the list is newest first, so it stops at batches created before ``since``
        (Unix seconds, the upload: none older can use the file)."""

        async def go() -> ProviderBatch | None:
            async for found in self._sdk.batches.list(limit=LIST_PAGE):
                batch = _batch(found)
                mine = all(batch.metadata.get(k) == v for k, v in metadata.items())
                if mine or batch.input_file_id == file_id:
                    return batch
                older = batch.created_at is not None and batch.created_at < (since or 0)
                if since is not None and older:
                    return None
            return None

        return await self._call(go)

    async def lines(self, file_id: str) -> AsyncIterator[str]:
        """The lines of a result file as they arrive (none kept in memory)."""
        try:
            async with self._sdk.files.with_streaming_response.content(file_id) as response:
                async for line in response.iter_lines():
                    if line.strip():
                        yield line
        except openai.APIConnectionError as exc:
            raise _connection_error(exc, self._client.config.timeout, self._redact) from None
        except openai.APIStatusError as exc:
            raise _status_error(exc, self._redact) from None


def line_result(line: str, redact: Callable[[str], str]) -> tuple[str, Completion | EndpointError]:
    """The ``custom_id`` of a result line and what it holds; ``ValueError`` for a line
    that names no ``custom_id`` (nothing to map it to)."""
    data = json.loads(line)
    custom_id = data.get("custom_id") if isinstance(data, dict) else None
    if not isinstance(custom_id, str):
        raise ValueError("a result line without a custom_id")
    response = data.get("response")
    error = data.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status = int(response["status_code"])
        headers = {}
        if isinstance(response.get("request_id"), str):
            headers["x-request-id"] = response["request_id"]
        body = response.get("body")
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        if status == 200:
            return custom_id, completion_from(text, status, headers)
        sdk_body = body.get("error", body) if isinstance(body, dict) else body
        kept = redact(text)[:ERROR_BODY_LIMIT]
        return custom_id, status_error(status, sdk_body, headers, kept=kept, redact=redact)
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    kind = ErrorKind.RETRYABLE
    if isinstance(code, str) and code not in NOT_EXECUTED and code.startswith("invalid"):
        kind = ErrorKind.PERMANENT
    return custom_id, EndpointError(
        kind,
        redact(str(code or "batch_line_error"))[:100],
        redact(str(message or "the provider batch returned no response for this line"))[:2000],
        body=redact(json.dumps(error, ensure_ascii=False))[:ERROR_BODY_LIMIT] if error else None,
    )
