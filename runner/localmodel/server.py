"""The local model over real HTTP: a Starlette app, served by uvicorn, with test knobs.

This module owns what only exists on the wire: streamed replies (``stream: true``, as
server-sent events: ``runner.localmodel.streaming``), simulated latency, OpenAI-style
rate limits (requests and tokens per minute, HTTP 429 with ``Retry-After`` and the
``x-ratelimit-*`` headers on every response), injected faults (500, 503, a hang that
outlives the client's timeout, a dropped connection), and streaming file uploads and
downloads of the Batch API. Everything else is :class:`LocalModelService`, the same core
the in-process transport uses.

``run_server(options)`` serves in the foreground (the ``runner serve`` command);
``running_server(options)`` serves from a background thread for tests and benchmarks and
yields the base URL.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from runner.localmodel.batches import BatchOptions
from runner.localmodel.service import (
    MODEL_ID,
    LocalModelService,
    LocalResponse,
    check_fingerprints,
    check_nondeterminism,
    error_body,
    route_of,
)
from runner.localmodel.streaming import stream, unstreamed, wants_stream

__all__ = [
    "FAULT_KINDS",
    "ServerOptions",
    "create_app",
    "parse_latency",
    "run_server",
    "running_server",
]

FAULT_KINDS = ("429", "500", "503", "timeout", "drop")
_OFFLOAD_TOKENS = 4096  # requests estimated above this run in a worker thread
_DROP_MESSAGE = "ASGI callable returned without completing response."


def parse_latency(value: str | float) -> tuple[float, float]:
    """``"120"`` or ``120`` -> (120, 120); ``"50-200"`` -> (50, 200), in milliseconds."""
    text = str(value).strip()
    low_text, _, high_text = text.partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if high_text else low
    except ValueError:
        raise ValueError(
            f"latency must be milliseconds or a range like 50-200, got {value!r}"
        ) from None
    if not (0.0 <= low <= high and math.isfinite(high)):
        raise ValueError(f"latency range must satisfy 0 <= low <= high, got {value!r}")
    return low, high


@dataclass(frozen=True)
class ServerOptions:
    """Settings of the HTTP server; every field maps to a ``runner serve`` flag."""

    host: str = "127.0.0.1"
    port: int = 8000
    latency_ms: str | float = 0  # fixed ("120") or uniform range ("50-200")
    rpm: int | None = None  # requests per minute; None = unlimited
    tpm: int | None = None  # tokens per minute (prompt + max_tokens x n); None = unlimited
    fail_rate: float = 0.0  # share of requests that get a fault from ``faults``
    variant: str | None = None  # simulate a backend update: other outputs, other fingerprint
    seed: int = 0  # seeds latency and fault draws, so a run's fault pattern repeats
    nondeterminism: float = 0.0  # probability that a seeded choice leaves its seeded path
    fingerprints: tuple[str, ...] | None = None  # served system_fingerprints; None: the model's
    noise_seed: int | None = None  # seeds the two above's draws; None: fresh at every start
    faults: tuple[str, ...] = FAULT_KINDS
    hang_s: float = 60.0  # how long a "timeout" fault holds the request before closing
    log_level: str = "info"
    batches: BatchOptions = field(default_factory=BatchOptions)  # the Batch API's knobs
    latency_range: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "latency_range", parse_latency(self.latency_ms))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        for name, limit in (("rpm", self.rpm), ("tpm", self.tpm)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1, got {limit}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate}")
        unknown = [kind for kind in self.faults if kind not in FAULT_KINDS]
        if unknown or not self.faults:
            raise ValueError(f"faults must be a non-empty subset of {FAULT_KINDS}, got {unknown}")
        if self.hang_s < 0:
            raise ValueError(f"hang_s must not be negative, got {self.hang_s}")
        check_nondeterminism(self.nondeterminism)
        if self.fingerprints is not None:
            check_fingerprints(self.fingerprints)

    def service(self) -> LocalModelService:
        """The model these options serve: variant and server-side noise."""
        return LocalModelService(
            self.variant,
            nondeterminism=self.nondeterminism,
            fingerprints=self.fingerprints,
            noise_seed=self.noise_seed,
            batches=self.batches,
        )


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``"120ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds < 1.0:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class _Bucket:
    """A per-minute limit as a token bucket: full at ``limit``, refilled at limit/60 per s."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.level = float(limit)
        self._rate = limit / 60.0
        self._stamp = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.limit, self.level + (now - self._stamp) * self._rate)
        self._stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available."""
        return max(amount - self.level, 0.0) / self._rate

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(max(math.floor(self.level), 0)),
            f"x-ratelimit-reset-{kind}": _duration(self.wait_for(self.limit)),
        }


class _RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.requests = _Bucket(rpm) if rpm is not None else None
        self.tokens = _Bucket(tpm) if tpm is not None else None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.requests is not None:
            self.requests.refill()
            headers.update(self.requests.headers("requests"))
        if self.tokens is not None:
            self.tokens.refill()
            headers.update(self.tokens.headers("tokens"))
        return headers

    def admit(self, tokens: int) -> Response | None:
        """Charge one request of ``tokens``; a 429 response if a limit says no."""
        for bucket, kind, amount, unit in (
            (self.requests, "requests", 1, "RPM"),
            (self.tokens, "tokens", tokens, "TPM"),
        ):
            if bucket is None:
                continue
            bucket.refill()
            if amount > bucket.limit:
                message = (
                    f"Request too large for {MODEL_ID} on {kind} per min ({unit}): Limit "
                    f"{bucket.limit}, Requested {amount}. Reduce the input or max_tokens."
                )
                return self._reject(message, kind, None)
            if bucket.level < amount:
                wait = bucket.wait_for(amount)
                used = bucket.limit - max(math.floor(bucket.level), 0)
                message = (
                    f"Rate limit reached for {MODEL_ID} on {kind} per min ({unit}): Limit "
                    f"{bucket.limit}, Used {used}, Requested {amount}. Please try again in "
                    f"{_duration(wait)}."
                )
                return self._reject(message, kind, wait)
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= tokens
        return None

    def _reject(self, message: str, kind: str, wait: float | None) -> Response:
        headers = {"content-type": "application/json"}
        if wait is None:
            headers["x-should-retry"] = "false"
        else:
            headers["retry-after"] = str(max(math.ceil(wait), 1))
            headers["retry-after-ms"] = str(max(math.ceil(wait * 1000), 1))
        body = error_body(message, kind, None, "rate_limit_exceeded")
        return Response(body, status_code=429, headers=headers)


class _BrokenResponse(Response):
    """Starts a response, then closes the connection without the body (optionally after
    holding the request for ``hold_s`` or until the client gives up)."""

    def __init__(self, hold_s: float, headers: dict[str, str]) -> None:
        super().__init__(b"", status_code=200, headers=headers)
        self.hold_s = hold_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hold_s > 0:
            with anyio.move_on_after(self.hold_s):
                while (await receive())["type"] != "http.disconnect":
                    pass
                return  # the client gave up first: nothing left to send
        # Promise a body that never comes: the client sees the connection drop mid-response.
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        headers.append((b"content-length", b"1024"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})


class _DropFilter(logging.Filter):
    """Hides uvicorn's complaint about the connections we drop on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DROP_MESSAGE


_DROP_FILTER = _DropFilter()


def _fault_response(kind: str, hang_s: float, rng: random.Random) -> Response:
    if kind == "429":
        # A spurious rate limit, as busy providers send even under the limit.
        wait = rng.uniform(0.1, 1.0)
        message = f"Rate limit reached for {MODEL_ID}. Please try again in {_duration(wait)}."
        headers = {
            "retry-after": str(max(math.ceil(wait), 1)),
            "retry-after-ms": str(math.ceil(wait * 1000)),
        }
        body = error_body(message, "requests", None, "rate_limit_exceeded")
        return Response(body, status_code=429, headers=headers)
    if kind == "500":
        message = "The server had an error while processing your request. Sorry about that!"
        return Response(error_body(message, "server_error"), status_code=500)
    if kind == "503":
        message = "The server is overloaded or not ready yet."
        return Response(error_body(message, "server_error"), status_code=503)
    return _BrokenResponse(
        hang_s if kind == "timeout" else 0.0, {"content-type": "application/json"}
    )


def create_app(options: ServerOptions, service: LocalModelService | None = None) -> Starlette:
    """The ASGI app: limits, latency and faults in front of the service."""
    service = service if service is not None else options.service()
    limiter = _RateLimiter(options.rpm, options.tpm)
    latency_rng = random.Random(f"latency:{options.seed}")
    fault_rng = random.Random(f"faults:{options.seed}")
    low_ms, high_ms = options.latency_range

    async def answer(request: Request, method: str, path: str) -> LocalResponse:
        content_type = request.headers.get("content-type")
        if method == "POST" and route_of(path) == "/files":
            return await service.upload(content_type, request.stream())
        body = await request.body()
        if service.estimate_tokens(method, path, body) > _OFFLOAD_TOKENS:
            return await anyio.to_thread.run_sync(service.handle, method, path, body, content_type)
        return service.handle(method, path, body, content_type)

    async def endpoint(request: Request) -> Response:
        method, path = request.method, request.url.path
        if request.url.query:
            path = f"{path}?{request.url.query}"
        body = b"" if method == "POST" and route_of(path) == "/files" else await request.body()
        streamed = wants_stream(method, path, body)
        # A streamed request costs its tokens like any other (its whole body, unstreamed).
        tokens = service.estimate_tokens(method, path, unstreamed(streamed) if streamed else body)
        limited = method == "POST"
        rejection = limiter.admit(tokens) if limited else None
        if rejection is not None:
            rejection.headers.update(limiter.headers())
            return rejection
        delay_ms = latency_rng.uniform(low_ms, high_ms) if high_ms > 0 else 0.0
        if delay_ms > 0:
            await anyio.sleep(delay_ms / 1000)
        if options.fail_rate > 0 and fault_rng.random() < options.fail_rate:
            kind = options.faults[fault_rng.randrange(len(options.faults))]
            response = _fault_response(kind, options.hang_s, fault_rng)
        elif streamed is not None:
            response = _streamed(service, method, path, streamed)
        else:
            result = await answer(request, method, path)
            if result.path is not None:
                response = FileResponse(result.path, headers=result.headers)
            else:
                response = Response(result.body, status_code=result.status, headers=result.headers)
        response.headers.update(limiter.headers())
        return response

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", endpoint, methods=methods)])


def _streamed(
    service: LocalModelService, method: str, path: str, body: dict[str, object]
) -> Response:
    """``stream: true``: the reply as server-sent events (``runner.localmodel.streaming``)."""
    answer = stream(service, method, path, body)
    if isinstance(answer, LocalResponse):
        return Response(answer.body, status_code=answer.status, headers=answer.headers)
    headers, events = answer
    return StreamingResponse(events, headers=headers, media_type="text/event-stream")


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGINT/SIGTERM end in a normal return.

    uvicorn re-raises the signal after its graceful shutdown, which turns a requested stop
    into a KeyboardInterrupt or a kill; ``runner serve`` should exit 0 instead.
    """

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _config(options: ServerOptions, service: LocalModelService | None) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(options, service),
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=1,
    )


def run_server(options: ServerOptions) -> None:
    """Serve in the foreground until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    service = options.service()
    noise = f", nondeterminism {service.nondeterminism:g}" if service.nondeterminism else ""
    print(
        f"seed-runner local model {MODEL_ID} ({', '.join(service.fingerprints)}{noise}) at "
        f"http://{options.host}:{options.port}/v1",
        file=sys.stderr,
    )
    if options.batches.dir is not None:
        service.batches.resume()  # batches a killed server left run on here
    logger = logging.getLogger("uvicorn.error")
    logger.addFilter(_DROP_FILTER)
    try:
        _Server(_config(options, service)).run()
    finally:
        service.close()
        logger.removeFilter(_DROP_FILTER)


@contextmanager
def running_server(
    options: ServerOptions | None = None, service: LocalModelService | None = None
) -> Iterator[str]:
    """Serve from a background thread; yields the base URL (``http://host:port/v1``).

    Without ``options`` it listens on a free port of 127.0.0.1; pass ``port=0`` in your own
    options for the same. Leaving the block stops the server and joins its thread (and
    closes the service, running batches included, unless the caller passed it).
    """
    options = options if options is not None else ServerOptions(port=0, log_level="warning")
    owned = service is None
    service = service if service is not None else options.service()
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.host, options.port))
    host, port = sock.getsockname()[:2]
    server = _Server(_config(options, service))
    logger = logging.getLogger("uvicorn.error")
    logger.addFilter(_DROP_FILTER)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local model server did not start; see the log above")
            time.sleep(0.01)
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        if owned:
            service.close()
        sock.close()
        logger.removeFilter(_DROP_FILTER)
