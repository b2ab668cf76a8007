"""The openai SDK client the runner sends through, with its request building memoised.

For every call, ``AsyncOpenAI`` rebuilds the same URL and headers from scratch: it merges
its default, auth and per-call headers, parses the base URL and the path three times, and
normalises every header twice. With a worker's calls that is about 0.4 ms of CPU per
request, more than the HTTP transport itself, and at a few hundred requests in flight it
is what bounds a worker's throughput.

A worker's calls are all alike: one method and path, no per-call headers, query or
timeout, and a body already serialised (``content=bytes``). For those, ``RunnerOpenAI``
lets the SDK build the first request as usual and keeps its URL, headers (less
``Content-Length``) and extensions; later requests for the same method, path, retry count
and security options are made from that template and their own body. Anything else
(per-call headers or options, JSON bodies, files, an idempotency header, whose value
differs per request) goes through the SDK's own ``_build_request`` untouched.

Everything after building is the SDK's own path: ``_prepare_request``, auth retries,
``_send_request``, status errors. A test builds requests both ways and checks that
method, URL, headers, body and extensions are identical, and another fails when the SDK's
request options gain a field that this module has not reviewed.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
from openai._models import FinalRequestOptions

# The FinalRequestOptions fields this module has reviewed. Those that shape the built
# request must hold their defaults for a template to be used; the others take effect
# after building (retries, redirects, parsing, streaming).
REVIEWED_OPTION_FIELDS = frozenset(
    {
        "method",
        "url",
        "content",
        "security",
        # must be unset for a template:
        "params",
        "headers",
        "timeout",
        "files",
        "json_data",
        "extra_json",
        "idempotency_key",
        # used after the request is built:
        "max_retries",
        "post_parser",
        "follow_redirects",
        "synthesize_event_and_data",
        "stream_mode",
    }
)

_Template = tuple[httpx2.URL, httpx2.Headers, dict[str, Any]]


def _templatable(options: FinalRequestOptions) -> bool:
    return (
        not options.params
        and not options.headers
        and isinstance(options.timeout, openai.NotGiven)
        and options.files is None
        and options.json_data is None
        and options.extra_json is None
    )


class RunnerOpenAI(openai.AsyncOpenAI):
    """``AsyncOpenAI`` that builds each distinct request shape once (see the module doc).

    The client's own settings (API key, base URL, default headers, timeout) must not be
    changed after the first request: templates are made from them. The runner never
    does; it makes one client per endpoint and configuration.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._templates: dict[tuple[Any, ...], _Template] = {}

    @property
    def user_agent(self) -> str:
        # The SDK names the client class in User-Agent; servers see the stock client's.
        return super().user_agent.replace(type(self).__name__, "AsyncOpenAI", 1)

    def _build_request(
        self, options: FinalRequestOptions, *, retries_taken: int = 0
    ) -> httpx2.Request:
        content = options.content
        if not isinstance(content, bytes) or self._idempotency_header or not _templatable(options):
            return super()._build_request(options, retries_taken=retries_taken)
        key = (options.method, options.url, retries_taken, tuple(options.security.items()))
        template = self._templates.get(key)
        if template is None:
            request = super()._build_request(options, retries_taken=retries_taken)
            headers = httpx2.Headers(
                [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
            )
            self._templates[key] = (request.url, headers, dict(request.extensions))
            return request
        url, headers, extensions = template
        # Request copies the headers and extensions, and adds this body's Content-Length.
        return httpx2.Request(
            options.method, url, headers=headers, content=content, extensions=extensions
        )
