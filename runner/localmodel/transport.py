"""In-process HTTP transports: the ``openai`` SDK talks to the local model without a socket.

This module owns the adapter between ``httpx2`` (the HTTP library of the installed
``openai`` SDK) and :class:`LocalModelService`. The SDK still builds every request and
parses every response itself; only the network hop is replaced by a direct call::

    service = LocalModelService()
    client = openai.AsyncOpenAI(
        base_url=LOCAL_BASE_URL,
        api_key="local",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=LocalTransport(service)),
    )

The model runs inline in the calling task: a typical completion takes well under a
millisecond, less than a thread hand-off would cost.

A file's content (the Batch API's downloads) streams from disk in chunks, and the async
transport streams uploads to disk as ``runner serve`` does.
Batches run in a background thread of the service; ``LocalModelService.close`` stops them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path

import httpx2

from runner.localmodel.service import LocalModelService, LocalResponse, route_of

__all__ = ["LOCAL_BASE_URL", "LocalSyncTransport", "LocalTransport"]

LOCAL_BASE_URL = "http://local.invalid/v1"
"""A base URL for clients of these transports; ``.invalid`` can never resolve to a host."""


_CHUNK = 1 << 16


def _target(request: httpx2.Request) -> str:
    """The path with its query: the Batch API's lists read ``limit`` and ``after``."""
    return request.url.raw_path.decode("ascii")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


async def _async_file_chunks(path: Path) -> AsyncIterator[bytes]:
    for chunk in _file_chunks(path):
        yield chunk


def _to_httpx(request: httpx2.Request, answer: LocalResponse, *, sync: bool) -> httpx2.Response:
    if answer.path is None:
        content: bytes | Iterator[bytes] | AsyncIterator[bytes] = answer.body
    else:  # a file's content streams: memory does not grow with the file
        content = _file_chunks(answer.path) if sync else _async_file_chunks(answer.path)
    return httpx2.Response(answer.status, headers=answer.headers, content=content, request=request)


def _answer(service: LocalModelService, request: httpx2.Request, body: bytes) -> LocalResponse:
    content_type = request.headers.get("content-type")
    return service.handle(request.method, _target(request), body, content_type)


class LocalTransport(httpx2.AsyncBaseTransport):
    """Async transport that answers every request from a :class:`LocalModelService`."""

    def __init__(self, service: LocalModelService | None = None) -> None:
        self.service = service if service is not None else LocalModelService()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and route_of(request.url.path) == "/files":
            stream = request.stream
            assert isinstance(stream, AsyncIterable)  # an AsyncClient's request
            content_type = request.headers.get("content-type")
            answer = await self.service.upload(content_type, stream)
            return _to_httpx(request, answer, sync=False)
        body = await request.aread()
        return _to_httpx(request, _answer(self.service, request, body), sync=False)


class LocalSyncTransport(httpx2.BaseTransport):
    """Blocking twin of :class:`LocalTransport`, for ``openai.OpenAI`` and ``httpx2.Client``."""

    def __init__(self, service: LocalModelService | None = None) -> None:
        self.service = service if service is not None else LocalModelService()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        return _to_httpx(request, _answer(self.service, request, body), sync=True)
