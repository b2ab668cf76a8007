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
"""

from __future__ import annotations

import httpx2

from runner.localmodel.service import LocalModelService, LocalResponse

__all__ = ["LOCAL_BASE_URL", "LocalSyncTransport", "LocalTransport"]

LOCAL_BASE_URL = "http://local.invalid/v1"
"""A base URL for clients of these transports; ``.invalid`` can never resolve to a host."""


def _to_httpx(request: httpx2.Request, answer: LocalResponse) -> httpx2.Response:
    return httpx2.Response(
        answer.status, headers=answer.headers, content=answer.body, request=request
    )


class LocalTransport(httpx2.AsyncBaseTransport):
    """Async transport that answers every request from a :class:`LocalModelService`."""

    def __init__(self, service: LocalModelService | None = None) -> None:
        self.service = service if service is not None else LocalModelService()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        return _to_httpx(request, self.service.handle(request.method, request.url.path, body))


class LocalSyncTransport(httpx2.BaseTransport):
    """Blocking twin of :class:`LocalTransport`, for ``openai.OpenAI`` and ``httpx2.Client``."""

    def __init__(self, service: LocalModelService | None = None) -> None:
        self.service = service if service is not None else LocalModelService()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        return _to_httpx(request, self.service.handle(request.method, request.url.path, body))
