"""Where requests go: endpoint clients and the one place provider errors are translated.

Every endpoint, remote or built-in, is driven through the real ``openai`` SDK
(``AsyncOpenAI(max_retries=0)``: retries are ours, so they go through our attempt
count). The rest of the code sees only ``Completion`` and ``EndpointError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runner.ratelimit import RateLimitInfo


class ErrorKind(StrEnum):
    """Whether trying again can help."""

    RETRYABLE = "retryable"  # 408, 409, 429 (not insufficient_quota), 5xx, timeouts, bad bodies
    PERMANENT = "permanent"  # 400, 401, 403, 404, 422, ...: the same request fails again


@dataclass(frozen=True)
class Completion:
    """A successful answer of any request kind as the endpoint returned it
    (``runner.endpoints.kinds`` reads each kind's body into these fields)."""

    response: str  # the body exactly as returned
    outputs: tuple[str | None, ...]  # chat: every choice's content in order; responses: its text
    finish_reason: str | None
    model: str | None
    system_fingerprint: str | None
    request_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    http_status: int
    rate_limits: RateLimitInfo | None = None  # what the x-ratelimit-* headers said
    response_status: str | None = None  # responses: completed, incomplete, ...
    incomplete_details: str | None = None  # responses: why incomplete (JSON as returned)
    service_tier: str | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    embedding: bytes | None = None  # embeddings: every vector as float32 bytes
    embedding_dimensions: int | None = None
    tool_calls: str | None = None  # canonical JSON [{"name", "arguments"}], None if none


class EndpointError(Exception):
    """A try that did not produce a completion."""

    def __init__(
        self,
        kind: ErrorKind,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        rate_limits: RateLimitInfo | None = None,
        body: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.error_type = error_type
        self.message = message
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait
        self.rate_limits = rate_limits
        self.body = body  # the error body exactly as the server sent it (keys redacted)
        self.request_id = request_id  # the server's x-request-id header, if it sent one

    @property
    def retryable(self) -> bool:
        return self.kind is ErrorKind.RETRYABLE
