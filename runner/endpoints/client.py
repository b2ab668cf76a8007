"""The OpenAI-compatible endpoint client, used for remote servers and the local model alike.

The stored canonical body is sent as it is: ``model`` and ``messages`` through the
SDK's arguments, every other key through ``extra_body``, so the JSON the server
receives equals the stored body (tests check this byte for byte after parsing).
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion

from runner.config import EndpointConfig
from runner.endpoints import Completion, EndpointError, ErrorKind
from runner.errors import ConfigError
from runner.ratelimit import RateLimitInfo

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


def _status_error(exc: openai.APIStatusError, redact: Redactor) -> EndpointError:
    status = exc.status_code
    body: Any = exc.body
    detail = body.get("error", body) if isinstance(body, dict) else body
    code = detail.get("code") if isinstance(detail, dict) else None
    etype = detail.get("type") if isinstance(detail, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    text = redact(str(message or exc.message or f"HTTP {status}"))
    if status == 429 and "insufficient_quota" in (code, etype):
        return EndpointError(
            ErrorKind.PERMANENT,
            "insufficient_quota",
            f"out of quota: {text} (check the plan and billing of this API key)",
            status=status,
        )
    headers = exc.response.headers
    # x-should-retry: false is the server saying this exact request can never pass.
    retryable = (status in RETRYABLE_STATUS or status >= 500) and (
        headers.get("x-should-retry", "").lower() != "false"
    )
    return EndpointError(
        ErrorKind.RETRYABLE if retryable else ErrorKind.PERMANENT,
        str(code or etype or f"http_{status}"),
        text,
        status=status,
        retry_after=parse_retry_after(headers),
        rate_limits=RateLimitInfo.from_headers(headers),
    )


def _completion(raw: Any) -> Completion:
    http: httpx2.Response = raw.http_response
    text = http.text
    try:
        data = json.loads(text)
        parsed: ChatCompletion = raw.parse()
    except Exception as exc:  # any unparseable body is a transient server fault
        raise EndpointError(
            ErrorKind.RETRYABLE,
            "invalid_response",
            f"the endpoint returned a body that is not a chat completion: {exc}"[:500],
            status=http.status_code,
            rate_limits=RateLimitInfo.from_headers(http.headers),
        ) from exc
    if not isinstance(data, dict) or not parsed.choices:
        raise EndpointError(
            ErrorKind.RETRYABLE,
            "invalid_response",
            "the response has no choices",
            status=http.status_code,
        )
    choices = sorted(parsed.choices, key=lambda c: c.index)
    usage = parsed.usage
    return Completion(
        response=text,
        outputs=tuple(c.message.content for c in choices),
        finish_reason=choices[0].finish_reason,
        model=parsed.model,
        system_fingerprint=parsed.system_fingerprint,
        request_id=http.headers.get("x-request-id") or parsed.id,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        total_tokens=usage.total_tokens if usage else None,
        http_status=http.status_code,
        rate_limits=RateLimitInfo.from_headers(http.headers),
    )


class EndpointClient:
    """One endpoint's SDK client; create it inside the running event loop."""

    def __init__(self, config: EndpointConfig, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        env = os.environ if env is None else env
        if config.type == "local":
            from runner.localmodel import LocalModelService
            from runner.localmodel.transport import LOCAL_BASE_URL, LocalTransport

            api_key = "local"
            base_url = LOCAL_BASE_URL
            http_client = httpx2.AsyncClient(
                transport=LocalTransport(LocalModelService(variant=config.variant))
            )
        else:
            key_env = config.api_key_env or ""
            api_key = env.get(key_env, "") if key_env else ""
            if key_env and not api_key:
                raise ConfigError(
                    f"endpoint {config.name!r}: the environment variable {key_env} "
                    "is not set (it must hold the API key)"
                )
            base_url = config.base_url or ""
            http_client = httpx2.AsyncClient(
                timeout=config.timeout,
                limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000),
            )
        self._redact = Redactor(api_key)
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "none",
            base_url=base_url,
            max_retries=0,
            timeout=config.timeout,
            http_client=http_client,
        )

    async def chat(self, body: Mapping[str, Any]) -> Completion:
        """Send one stored request body; raise ``EndpointError`` on any failure."""
        payload = dict(body)
        model = payload.pop("model")
        messages = payload.pop("messages")
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_body=payload
            )
        except openai.APITimeoutError:
            raise EndpointError(
                ErrorKind.RETRYABLE,
                "timeout",
                f"no response within {self.config.timeout:g} s",
            ) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise EndpointError(
                ErrorKind.RETRYABLE,
                "connection_error",
                self._redact(f"{type(cause).__name__}: {cause}")[:500],
            ) from None
        except openai.APIStatusError as exc:
            raise _status_error(exc, self._redact) from None
        return _completion(raw)

    async def aclose(self) -> None:
        await self._client.close()


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
