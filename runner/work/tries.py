"""One try of a claimed run: the request under its endpoint's limits, and its outcome.

``Tries.attempt`` sends a run's body through its endpoint's client once and turns what
came back into an ``Outcome`` for the writer: a success with everything stored about it,
or an error that is retried (with full-jitter backoff, never sooner than the server
asked), failed for good, or released. Three HTTP 401s in a row give the endpoint up: a
bad key must not burn a batch, so the 401s before that are retried, and the ones after
(requests already in flight) release their runs without counting the try.

A run that asks for K samples (``n`` = K) sends one request. OpenAI, vLLM and the
built-in model answer with K choices; llama.cpp's server and some proxies ignore ``n``
and answer with one. Then the rest are asked for by further requests of the same body
(``n`` set to what is still missing, for servers that cap it), each under the endpoint's
limits, until there are K: a run never stores fewer samples than it asked for, and
``runs.n_honoured`` says which way they came. An error on any of them is the try's.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from runner.config import WorkerConfig
from runner.db.queue import ClaimedRun, Outcome, samples_asked, with_changes
from runner.endpoints import Completion, EndpointError
from runner.kinds import Api, schemas
from runner.logs import run_context
from runner.ratelimit import EndpointLimiter, Limits, Permit, estimate_tokens
from runner.work.stats import WorkerStats

if TYPE_CHECKING:
    from runner.endpoints.client import EndpointPool  # the openai SDK: see Worker.run

log = logging.getLogger("runner.worker")

AUTH_FAILURES_TO_GIVE_UP = 3  # 401s in a row before a worker stops claiming for an endpoint


def answer_fields(completion: Completion) -> dict[str, Any]:
    """What an Outcome stores of an endpoint's answer, whichever way it travelled (one
    request per try here, a provider batch line in ``runner.work.batches``)."""
    return {
        "http_status": completion.http_status,
        "response": completion.response,
        "output": completion.outputs[0],
        # An embeddings run has vectors, not text: no outputs list to store.
        "outputs": None
        if completion.embedding is not None
        else json.dumps(list(completion.outputs), ensure_ascii=False),
        "finish_reason": completion.finish_reason,
        "response_model": completion.model,
        "system_fingerprint": completion.system_fingerprint,
        "provider_request_id": completion.request_id,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.total_tokens,
        "response_status": completion.response_status,
        "incomplete_details": completion.incomplete_details,
        "service_tier": completion.service_tier,
        "cached_tokens": completion.cached_tokens,
        "reasoning_tokens": completion.reasoning_tokens,
        "embedding": completion.embedding,
        "embedding_dimensions": completion.embedding_dimensions,
        "tool_calls": completion.tool_calls,
    }


def backoff_seconds(attempt: int, config: WorkerConfig, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, capped, never shorter than the server asked."""
    ceiling = min(config.backoff_max_seconds, config.backoff_base_seconds * 2 ** (attempt - 1))
    delay = random.uniform(0, ceiling)
    return max(delay, retry_after or 0.0)


def _total(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def merged(first: Completion, more: Completion) -> Completion:
    """``first`` with ``more``'s choices appended and its token usage added; the stored
    response, model, fingerprint and request id stay the first response's."""
    return replace(
        first,
        outputs=first.outputs + more.outputs,
        prompt_tokens=_total(first.prompt_tokens, more.prompt_tokens),
        completion_tokens=_total(first.completion_tokens, more.completion_tokens),
        total_tokens=_total(first.total_tokens, more.total_tokens),
    )


class Tries:
    """Makes one try of a run at a time; shared by a worker's request slots."""

    def __init__(
        self,
        config: WorkerConfig,
        limits: Limits,
        stats: WorkerStats,
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.limits = limits
        self.stats = stats
        self.clock = clock
        self._auth_failures: dict[str, int] = {}
        self._n_ignored: set[str] = set()  # endpoints already warned about

    async def attempt(
        self,
        run: ClaimedRun,
        pool: EndpointPool,
        sending: Callable[[int], Awaitable[None]],
    ) -> Outcome | None:
        """One try of a run under its endpoint's limits; None if the endpoint was given up.

        ``sending(run_id)`` is awaited just before the request goes out: from then on the
        try counts, even if the worker dies before its outcome is stored.
        """
        limiter = self.limits.get(run.endpoint, run.model)
        client = pool.get(run.endpoint)
        # Counting prompt tokens costs more than the rest of a claim: only under a TPM limit
        # (or while the first responses may still show one).
        metered = limiter.meters_tokens
        estimate = estimate_tokens(json.loads(run.body)) if metered else 0
        async with limiter.permit(estimate) as permit:
            if run.endpoint in self.stats.disabled_endpoints:
                return None
            await sending(run.run_id)
            started_at = self.clock()
            t0 = time.perf_counter()
            try:
                completion = await client.send(Api(run.api), run.body)
            except EndpointError as exc:
                return self._refused(run, limiter, permit, exc, started_at, t0)
            permit.settle(completion.total_tokens, completion.rate_limits)
        asked = samples_asked(run.body)
        honoured = None if asked == 1 else len(completion.outputs) >= asked
        while len(completion.outputs) < asked:
            request = with_changes(run.body, samples=asked - len(completion.outputs))
            self._warn_n_ignored(run.endpoint, len(completion.outputs), asked)
            estimate = estimate_tokens(json.loads(request)) if metered else 0
            async with limiter.permit(estimate) as permit:
                try:
                    more = await client.send(Api(run.api), request)
                except EndpointError as exc:
                    return self._refused(run, limiter, permit, exc, started_at, t0)
                permit.settle(more.total_tokens, more.rate_limits)
            completion = merged(completion, more)
        self._auth_failures.pop(run.endpoint, None)
        latency = (time.perf_counter() - t0) * 1000
        self.stats.succeeded += 1
        self.stats.prompt_tokens += completion.prompt_tokens or 0
        self.stats.completion_tokens += completion.completion_tokens or 0
        return Outcome(
            run_id=run.run_id,
            attempt=run.attempt,
            started_at=started_at,
            finished_at=self.clock(),
            latency_ms=round(latency, 3),
            outcome="succeeded",
            n_honoured=honoured,
            # An output that breaks its schema is still the endpoint's answer: stored.
            schema_valid=schemas.verdict(run.api, run.body, completion.outputs),
            **answer_fields(completion),
        )

    def _refused(
        self,
        run: ClaimedRun,
        limiter: EndpointLimiter,
        permit: Permit,
        exc: EndpointError,
        started_at: datetime,
        t0: float,
    ) -> Outcome:
        permit.refuse(exc.status, exc.rate_limits)
        if exc.status == 429 and exc.retryable:
            limiter.pause(self._pause_for(exc))
        self._count_auth_failure(run.endpoint, exc)
        return self._failure(run, started_at, t0, exc)

    def _warn_n_ignored(self, endpoint: str, got: int, asked: int) -> None:
        if endpoint not in self._n_ignored:
            self._n_ignored.add(endpoint)
            log.warning(
                "endpoint %s returned %d of the n=%d choices asked: the other samples are "
                "asked for by separate requests (runs.n_honoured = false)",
                endpoint,
                got,
                asked,
            )

    @staticmethod
    def _pause_for(exc: EndpointError) -> float:
        """How long a 429 pauses its endpoint: what the server asked, else its reset time."""
        if exc.retry_after is not None:
            return exc.retry_after
        info = exc.rate_limits
        resets = [r for r in (info.reset_requests, info.reset_tokens) if r] if info else []
        return min(resets) if resets else 1.0

    def _count_auth_failure(self, endpoint: str, exc: EndpointError) -> None:
        """An invalid key must not burn through a batch: give up after a few 401s in a row."""
        if exc.status != 401:
            self._auth_failures.pop(endpoint, None)
            return
        count = self._auth_failures[endpoint] = self._auth_failures.get(endpoint, 0) + 1
        if count >= AUTH_FAILURES_TO_GIVE_UP and endpoint not in self.stats.disabled_endpoints:
            why = (
                f"{count} requests in a row were refused with HTTP 401 ({exc.message}); "
                "check the endpoint's API key, then run `runner work` again"
            )
            self.stats.disabled_endpoints[endpoint] = why
            log.error("endpoint %s: not claiming its runs any more: %s", endpoint, why)

    def _failure(
        self, run: ClaimedRun, started_at: datetime, t0: float, exc: EndpointError
    ) -> Outcome:
        finished = self.clock()
        if exc.status == 401 and run.endpoint in self.stats.disabled_endpoints:
            # Its endpoint was given up on (a bad key): the run goes back like the rest of
            # its endpoint's runs, however many tries it had left.
            self.stats.released += 1
            return self._error_outcome(run, started_at, t0, exc, "released", finished)
        # A 401 before the endpoint is given up is held against the run like a retryable
        # error: a bad key must not fail the first few runs of a batch.
        retryable = exc.retryable or exc.status == 401
        retry = retryable and run.attempt < run.max_attempts
        retry_at = None
        if retry:
            delay = backoff_seconds(run.attempt, self.config, exc.retry_after)
            retry_at = finished + timedelta(seconds=delay)
            self.stats.retried += 1
        else:
            self.stats.failed += 1
        message = exc.message
        if retryable and not retry:
            message = f"{message} (gave up after {run.attempt} attempts)"
        log.log(
            logging.INFO if retry else logging.WARNING,
            "run %d (batch %d round %d key %s) attempt %d: %s: %s%s",
            run.run_id,
            run.batch_id,
            run.round_number,
            run.key,
            run.attempt,
            exc.error_type,
            exc.message,
            f"; retry in {(retry_at - finished).total_seconds():.1f} s" if retry_at else "",
            extra=run_context(run),
        )
        outcome = "retry" if retry else "failed"
        return self._error_outcome(run, started_at, t0, exc, outcome, finished, retry_at, message)

    @staticmethod
    def _error_outcome(
        run: ClaimedRun,
        started_at: datetime,
        t0: float,
        exc: EndpointError,
        outcome: str,
        finished: datetime,
        retry_at: datetime | None = None,
        message: str | None = None,
    ) -> Outcome:
        return Outcome(
            run_id=run.run_id,
            attempt=run.attempt,
            started_at=started_at,
            finished_at=finished,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
            outcome=outcome,
            http_status=exc.status,
            retry_at=retry_at,
            retry_after_ms=None if exc.retry_after is None else round(exc.retry_after * 1000, 3),
            provider_request_id=exc.request_id,
            error_type=exc.error_type,
            error_message=exc.message if message is None else message,
            error_body=exc.body,
        )
