"""The OpenAI-compatible endpoint client, used for remote servers and the local model alike.

The stored canonical body is sent as it is, byte for byte, through the SDK's client (its
headers, auth, timeouts and error mapping), so the server receives exactly the JSON that
is stored with the run (tests check the bytes).

Remote endpoints use the SDK's aiohttp transport (``openai.DefaultAioHttpClient``, the
SDK's documented option for high concurrency): with hundreds of connections open it
costs less than half the CPU per request of the default httpx2 pool, which is what
bounds a worker's throughput against a slow endpoint. The SDK client is ``RunnerOpenAI``
(``runner.endpoints.sdk``), which builds each request's URL and headers once instead of
on every call.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import httpx2
import openai

from runner.config import EndpointConfig
from runner.endpoints import Completion, EndpointError, ErrorKind, kinds
from runner.endpoints.sdk import RunnerOpenAI
from runner.errors import ConfigError
from runner.kinds import Api
from runner.ratelimit import RateLimitInfo

if TYPE_CHECKING:
    from runner.localmodel import LocalModelService

RETRYABLE_STATUS = frozenset({408, 409, 429})


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Redactor:
    """Removes a secret from any text before it is stored or logged."""

    def __init__(self, secret: str | None) -> None:
        self._secret = secret if secret and len(secret) >= 4 else None

    def __call__(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self(text)

    def completion(self, completion: Completion) -> Completion:
        """A completion with the secret taken out of every field a server wrote, if it
        echoed it anywhere (it costs one search of the body when it did not)."""
        secret = self._secret
        if secret is None or (
            secret not in completion.response and secret not in (completion.request_id or "")
        ):
            return completion
        return replace(
            completion,
            response=self(completion.response),
            outputs=tuple(self.optional(o) for o in completion.outputs),
            finish_reason=self.optional(completion.finish_reason),
            model=self.optional(completion.model),
            system_fingerprint=self.optional(completion.system_fingerprint),
            request_id=self.optional(completion.request_id),
        )


ERROR_BODY_LIMIT = 16_384  # characters of an error body kept; more is cut, and says so


def _error_text(body: Any) -> str | None:
    """What a server's error body says, whatever its shape.

    OpenAI's is ``{"error": {"message": ...}}``; others send ``{"error": "..."}``,
    ``{"detail": "..."}`` (FastAPI, llama.cpp's proxies), ``{"message": "..."}``, a
    FastAPI validation list, or plain text or HTML.
    """
    if isinstance(body, str):
        return body.strip() or None
    if not isinstance(body, dict):
        return None if body is None else json.dumps(body, ensure_ascii=False)
    for key in ("error", "detail", "message", "msg"):
        value = body.get(key)
        if isinstance(value, dict):
            inner = _error_text(value)
            if inner:
                return inner
        elif isinstance(value, str) and value.strip():
            return value.strip()
        elif isinstance(value, list) and value:
            return json.dumps(value, ensure_ascii=False)
    return json.dumps(body, ensure_ascii=False) if body else None


def _kept_body(http: httpx2.Response, redact: Redactor) -> str | None:
    """The error body as the server sent it (secrets redacted), for storage."""
    try:
        text = http.text
    except httpx2.ResponseNotRead:  # closed before it was read: nothing to keep
        return None
    if not text:
        return None
    text = redact(text)
    if len(text) > ERROR_BODY_LIMIT:
        return text[:ERROR_BODY_LIMIT] + f"... [cut: {len(text)} characters in all]"
    return text


def _status_error(exc: openai.APIStatusError, redact: Redactor) -> EndpointError:
    status = exc.status_code
    body: Any = exc.body  # the SDK's: the JSON body's "error" member, or the body itself
    detail = body if isinstance(body, dict) else {}
    code, etype = detail.get("code"), detail.get("type")
    code = code if isinstance(code, (str, int)) else None
    etype = etype if isinstance(etype, str) else None
    message = _error_text(body) or f"HTTP {status} with an empty body"
    text = redact(message[:2000])
    headers = exc.response.headers
    kept = _kept_body(exc.response, redact)
    # Everything a server wrote is redacted: some echo the key in a code or a header too.
    request_id = redact(headers.get("x-request-id") or "") or None
    if status == 429 and "insufficient_quota" in (code, etype):
        return EndpointError(
            ErrorKind.PERMANENT,
            "insufficient_quota",
            f"out of quota: {text} (check the plan and billing of this API key)",
            status=status,
            body=kept,
            request_id=request_id,
        )
    # x-should-retry: false is the server saying this exact request can never pass.
    retryable = (status in RETRYABLE_STATUS or status >= 500) and (
        headers.get("x-should-retry", "").lower() != "false"
    )
    return EndpointError(
        ErrorKind.RETRYABLE if retryable else ErrorKind.PERMANENT,
        redact(str(code or etype or f"http_{status}"))[:100],
        text,
        status=status,
        retry_after=parse_retry_after(headers),
        rate_limits=RateLimitInfo.from_headers(headers),
        body=kept,
        request_id=request_id,
    )


def _completion(http: httpx2.Response, api: Api) -> Completion:
    """Read what we store from a body of ``api``'s kind (``runner.endpoints.kinds``)."""
    text = http.text
    try:
        data = json.loads(text)
        fields = kinds.read(api, data)
    except ValueError as exc:  # json.JSONDecodeError included: a transient server fault
        raise EndpointError(
            ErrorKind.RETRYABLE,
            "invalid_response",
            f"the endpoint returned a body that is not a {api.value} response: {exc}"[:500],
            status=http.status_code,
            rate_limits=RateLimitInfo.from_headers(http.headers),
            body=text[:ERROR_BODY_LIMIT] or None,
            request_id=http.headers.get("x-request-id") or None,
        ) from exc
    model, ident = data.get("model"), data.get("id")
    fields.setdefault("response", text)
    return Completion(
        model=model if isinstance(model, str) else None,
        request_id=http.headers.get("x-request-id") or (ident if isinstance(ident, str) else None),
        http_status=http.status_code,
        rate_limits=RateLimitInfo.from_headers(http.headers),
        **fields,
    )


def _connection_error(
    exc: openai.APIConnectionError, timeout: float, redact: Redactor
) -> EndpointError:
    """A timeout or a lost connection, told apart by the transport's own exception.

    The aiohttp transport reports a refused connection as a connect timeout, so the
    SDK's exception class alone cannot tell the two apart: the end of the cause chain can.
    """
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    root = chain[-1]  # what the socket said: a timeout, or a refused / reset / cut connection
    if isinstance(root, (TimeoutError, httpx2.TimeoutException)):
        return EndpointError(ErrorKind.RETRYABLE, "timeout", f"no response within {timeout:g} s")
    return EndpointError(
        ErrorKind.RETRYABLE,
        "connection_error",
        redact(f"{type(root).__name__}: {root}")[:500],
    )


def _local_service(config: EndpointConfig) -> LocalModelService:
    """The built-in model as a ``type = "local"`` endpoint configures it."""
    from runner.localmodel import LocalModelService
    from runner.localmodel.batches import BatchOptions

    batches = BatchOptions(
        dir=config.batch_dir,
        turnaround_ms=config.batch_turnaround_ms,
        expire_fraction=config.batch_expire_fraction,
        line_error_rate=config.batch_line_error_rate,
        fail_validation=config.batch_fail_validation,
        max_requests=config.batch_max_requests,
        max_bytes=config.batch_max_bytes,
        log=config.batch_log,
    )
    return LocalModelService(
        variant=config.variant,
        nondeterminism=config.nondeterminism,
        fingerprints=config.fingerprints,
        noise_seed=config.noise_seed,
        batches=batches,
    )


class EndpointClient:
    """One endpoint's SDK client; create it inside the running event loop."""

    # The SDK client class; bench/throughput.py swaps in the stock one for comparison.
    sdk_class: type[openai.AsyncOpenAI] = RunnerOpenAI

    def __init__(self, config: EndpointConfig, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        env = os.environ if env is None else env
        self._service: LocalModelService | None = None
        if config.type == "local":
            from runner.localmodel.transport import LOCAL_BASE_URL, LocalTransport

            api_key = "local"
            base_url = LOCAL_BASE_URL
            self._service = _local_service(config)
            http_client = httpx2.AsyncClient(transport=LocalTransport(self._service))
        else:
            problem = config.missing_key(env)
            if problem:
                raise ConfigError(problem)
            api_key = env.get(config.api_key_env or "", "")
            base_url = config.base_url or ""
            # The worker's semaphore and the endpoint's max_concurrency bound requests in
            # flight; the pool only must not be the tighter bound (aiohttp's default is 100).
            http_client = openai.DefaultAioHttpClient(
                timeout=config.timeout,
                limits=httpx2.Limits(max_connections=4096, max_keepalive_connections=4096),
            )
        # The local model's "key" is no secret (and a common word in its prose).
        self._redact = Redactor(None if config.type == "local" else api_key)
        self._client = self.sdk_class(
            api_key=api_key or "none",
            base_url=base_url,
            max_retries=0,
            timeout=config.timeout,
            http_client=http_client,
        )

    async def chat(self, body: str | Mapping[str, Any]) -> Completion:
        """Send one chat completion body; see :meth:`send`."""
        return await self.send(Api.CHAT, body)

    async def send(self, api: Api, body: str | Mapping[str, Any]) -> Completion:
        """Send one request body of ``api``'s kind (the stored JSON text, or a mapping to
        serialise) to that API's path; raise ``EndpointError`` on any failure.

        The JSON goes through the SDK's client as it is (``post`` with the bytes, to the
        path ``chat.completions.create`` / ``responses.create`` / ``embeddings.create``
        post to), without re-shaping the body the way those methods do (a copy that
        costs more than the request).
        """
        content = (body if isinstance(body, str) else json.dumps(body)).encode()
        try:
            http = await self._client.post(api.path, content=content, cast_to=httpx2.Response)
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise _connection_error(exc, self.config.timeout, self._redact) from None
        except openai.APIStatusError as exc:
            raise _status_error(exc, self._redact) from None
        try:
            completion = _completion(http, api)
        except EndpointError as exc:  # a body that is not a completion
            exc.message = self._redact(exc.message)
            exc.body = self._redact.optional(exc.body)
            exc.request_id = self._redact.optional(exc.request_id)
            raise
        return self._redact.completion(completion)

    @property
    def sdk(self) -> openai.AsyncOpenAI:
        """The endpoint's SDK client, for the calls ``chat`` does not make (the Batch API's
        files and batches); it has ``max_retries=0`` like every call here."""
        return self._client

    async def aclose(self) -> None:
        await self._client.close()
        if self._service is not None:  # stops the local Batch API's running batches
            self._service.close()


class EndpointPool:
    """Clients by endpoint name, created on first use inside the event loop."""

    def __init__(self, endpoints: Mapping[str, EndpointConfig]) -> None:
        self._configs = endpoints
        self._clients: dict[str, EndpointClient] = {}

    def get(self, name: str) -> EndpointClient:
        client = self._clients.get(name)
        if client is None:
            if name not in self._configs:
                raise ConfigError(f"unknown endpoint {name!r}")
            client = self._clients[name] = EndpointClient(self._configs[name])
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
