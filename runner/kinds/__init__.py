"""Request kinds: which OpenAI API a job's body is for (chat, responses, embeddings).

A job's kind decides how its body is checked (``runner.kinds.params``), which path of
the endpoint it is sent to, and how the answer is read and stored. Stored as text in
``jobs.api``; Batch files give it per line by ``url``, YAML job files by ``api:``.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BATCH_URLS", "Api", "api_for_url"]


class Api(StrEnum):
    """The API a request is for. Values are stored as text (``jobs.api``)."""

    CHAT = "chat"  # /v1/chat/completions: messages in, choices out (the default)
    RESPONSES = "responses"  # /v1/responses: input in, output items out; no seed exists
    EMBEDDINGS = "embeddings"  # /v1/embeddings: input in, vectors out

    @property
    def path(self) -> str:
        """Where the SDK client posts it (relative to the endpoint's ``/v1`` base URL)."""
        return _PATHS[self]

    @property
    def batch_url(self) -> str:
        """The ``url`` of its lines in OpenAI Batch files."""
        return "/v1" + _PATHS[self]


_PATHS = {
    Api.CHAT: "/chat/completions",
    Api.RESPONSES: "/responses",
    Api.EMBEDDINGS: "/embeddings",
}
BATCH_URLS = {api.batch_url: api for api in Api}


def api_for_url(url: object) -> Api | None:
    """The kind of a Batch line's ``url``; None for a URL seed-runner does not send."""
    return BATCH_URLS.get(url) if isinstance(url, str) else None
