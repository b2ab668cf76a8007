"""The local endpoint's protocol core: OpenAI-shaped requests in, OpenAI-shaped bytes out.

This module owns routing, request seeding, response shapes and error bodies, independent
of any transport: the in-process ``httpx2`` transport and the Starlette server both call
:meth:`LocalModelService.handle` with a method, a path and the raw body.

Routes (with or without the ``/v1`` prefix): ``POST /v1/chat/completions``,
``POST /v1/responses`` (its shapes in ``runner.localmodel.responses``),
``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /v1/models/{id}``, and the Batch API's
``/v1/files…`` and ``/v1/batches…`` (runner.localmodel.batches). Other paths get 404,
other methods 405, bad bodies 400, all as ``{"error": {"message", "type", "param", "code"}}``.

Seeding. Each choice draws from its own ``random.Random``. With a ``seed``, choice ``i``'s
generator comes from SHA-256 over ``"v1:"``, the model's fingerprint digest, the canonical
JSON of everything that changes which tokens are drawn (seed, messages, temperature, top_p,
presence and frequency penalties) and ``i``. Fields that only cut or annotate the text
(``max_tokens``, ``stop``, ``n``, ``logprobs``, ``response_format``, ``model``) stay out, so a
smaller ``max_tokens`` returns a prefix of the longer answer and choice 0 is the same for
any ``n``. Without a seed the base comes from ``secrets``, so every call differs.

Server-side noise (off by default), drawn from the service's own generators, never from a
request: with ``nondeterminism`` P, each choice of a seeded request leaves its seeded path
with probability P at a token after the first (``LanguageModel.generate``'s ``noise``), as
real servers do when batch-dependent GPU kernels move a logit; with several
``fingerprints`` each response carries one drawn at random, as OpenAI's do. Which
fingerprint is served never changes the text. ``noise_seed`` makes both sequences repeat
for tests and benchmarks; by default they start from fresh OS entropy.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import threading
import time
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.localmodel.embeddings import embed, encode_base64
from runner.localmodel.model import (
    Generation,
    LanguageModel,
    SamplingParams,
    TokenLogprob,
    load_model,
)
from runner.localmodel.params import (
    ChatRequest,
    EmbeddingRequest,
    RequestError,
    parse_chat_request,
    parse_embedding_request,
)
from runner.localmodel.responses import (
    ResponsesRequest,
    parse_responses_request,
    response_body,
)
from runner.localmodel.structured import instance
from runner.localmodel.tokenizer import count_tokens, tokenize

if TYPE_CHECKING:
    from runner.localmodel.batches import BatchEngine, BatchOptions
    from runner.localmodel.files import Upload

__all__ = [
    "CONTEXT_WINDOW",
    "DEFAULT_TOKEN_ESTIMATE",
    "MODEL_ID",
    "LocalModelService",
    "LocalResponse",
    "check_fingerprints",
    "check_nondeterminism",
    "decode_json",
    "error_body",
    "json_object_text",
    "prompt_tokens_of",
    "require_method",
    "route_of",
]

MODEL_ID = "seed-runner-local"
MODEL_CREATED = 1767225600  # 2026-01-01T00:00:00Z, the model's nominal release
CONTEXT_WINDOW = 32768
DEFAULT_TOKEN_ESTIMATE = 256  # completion tokens assumed for rate limits without max_tokens
SEED_PREFIX = b"v1:"

# json_object mode wraps the text as {"text": "..."}; these format tokens count as output.
_JSON_PREFIX = tuple(tokenize('{"text": "'))
_JSON_SUFFIX = tuple(tokenize('"}'))


@dataclass(frozen=True)
class LocalResponse:
    """An HTTP response, ready for any transport."""

    status: int
    headers: dict[str, str]
    body: bytes
    path: Path | None = None  # stream this file as the body instead (a file's content)


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    """OpenAI's error envelope as JSON bytes."""
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


class _MethodNotAllowed(RequestError):
    def __init__(self, message: str, *, status: int, code: str, allowed: str) -> None:
        super().__init__(message, status=status, code=code)
        self.allowed = allowed


def require_method(method: str, allowed: str, path: str) -> None:
    """405 unless ``method`` is ``allowed``."""
    if method != allowed:
        raise _MethodNotAllowed(
            f"Method {method} is not allowed for {path}; use {allowed}.",
            status=405,
            code="method_not_allowed",
            allowed=allowed,
        )


def route_of(path: str) -> str:
    """The route of a request path: without ``/v1``, the query and a trailing slash."""
    path = path.split("?", 1)[0].rstrip("/")
    if path == "/v1" or path.startswith("/v1/"):
        path = path[3:]
    return path or "/"


def prompt_tokens_of(request: ChatRequest) -> int:
    """Chat-format count: 3 per message plus its content (and name), 3 to prime the reply."""
    total = 3
    for message in request.messages:
        total += 3 + count_tokens(message.content)
        if message.name:
            total += 1 + count_tokens(message.name)
    return total


def check_nondeterminism(value: object) -> float:
    """``value`` as a probability; ValueError naming ``nondeterminism`` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0.0 <= value <= 1.0)
    ):
        raise ValueError(f"nondeterminism must be a number from 0 to 1, got {value!r}")
    return float(value)


def check_fingerprints(values: object) -> tuple[str, ...]:
    """``values`` as a tuple of distinct non-empty strings; ValueError naming ``fingerprints``."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValueError(f"fingerprints must be a list of strings, got {values!r}")
    if not values:
        raise ValueError("fingerprints must list at least one value")
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"fingerprints must be non-empty strings, got {value!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"fingerprints must be distinct, got {list(values)!r}")
    return tuple(values)


class LocalModelService:
    """The built-in model behind an OpenAI-compatible request/response interface.

    ``variant`` serves a changed model (other distributions, other fingerprints);
    ``nondeterminism``, ``fingerprints`` and ``noise_seed`` are the server-side noise the
    module docstring describes. Bad values raise ValueError naming the argument.
    """

    def __init__(
        self,
        variant: str | None = None,
        *,
        nondeterminism: float = 0.0,
        fingerprints: Sequence[str] | None = None,
        noise_seed: int | None = None,
        batches: BatchOptions | None = None,
    ) -> None:
        self._variant = variant
        self._model: LanguageModel = load_model(variant)
        self._nondeterminism = check_nondeterminism(nondeterminism)
        if fingerprints is None:
            self._fingerprints: tuple[str, ...] = (self.system_fingerprint,)
        elif variant is None:
            self._fingerprints = check_fingerprints(fingerprints)
        else:
            # A variant is another backend: it never shows a fingerprint of the model it
            # changes, so each listed value stands for one derived from it and the variant.
            digest = self._model.fingerprint_digest
            self._fingerprints = tuple(
                "fp_" + hashlib.sha256(f"{digest}\0{fp}".encode()).hexdigest()[:10]
                for fp in check_fingerprints(fingerprints)
            )
        if noise_seed is not None and (
            isinstance(noise_seed, bool) or not isinstance(noise_seed, int)
        ):
            raise ValueError(f"noise_seed must be an integer, got {noise_seed!r}")
        self._noise_seed = noise_seed
        self._divergence_rng = random.Random(
            None if noise_seed is None else f"divergence:{noise_seed}"
        )
        self._fingerprint_rng = random.Random(
            None if noise_seed is None else f"fingerprints:{noise_seed}"
        )
        self._noise_lock = threading.Lock()
        self._batch_options = batches
        self._batch_engine: BatchEngine | None = None
        self._batch_lock = threading.Lock()

    @property
    def variant(self) -> str | None:
        return self._variant

    @property
    def model(self) -> LanguageModel:
        return self._model

    @property
    def nondeterminism(self) -> float:
        """Probability that a choice of a seeded request leaves its seeded path."""
        return self._nondeterminism

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """The ``system_fingerprint`` values served, one drawn per response."""
        return self._fingerprints

    @property
    def noise_seed(self) -> int | None:
        return self._noise_seed

    @property
    def system_fingerprint(self) -> str:
        """The model's own fingerprint, served unless a ``fingerprints`` list replaces it:
        ``fp_`` + 10 hex digits of the hash of corpus, hyperparameters and sampler version."""
        return "fp_" + self._model.fingerprint_digest[:10]

    def complete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """One chat completion without any transport: an OpenAI request body in, the
        response as a dict out (``choices``, ``usage``, ``system_fingerprint``…).

        For benchmarks and scripts that want many completions, server noise included, with
        no HTTP, SDK or database; a bad body raises ``RequestError`` with OpenAI's message.
        """
        return self._chat(parse_chat_request(dict(body)))

    @property
    def batches(self) -> BatchEngine:
        """The Batch API's files and batches (started at first use)."""
        with self._batch_lock:
            if self._batch_engine is None:
                from runner.localmodel.batches import BatchEngine, BatchOptions

                options = self._batch_options or BatchOptions()
                self._batch_engine = BatchEngine(self, options)
            return self._batch_engine

    def close(self) -> None:
        """Stop running batches and remove their temporary files (if any were made)."""
        with self._batch_lock:
            engine, self._batch_engine = self._batch_engine, None
        if engine is not None:
            engine.close()

    def handle(
        self, method: str, path: str, body: bytes, content_type: str | None = None
    ) -> LocalResponse:
        """Answer one HTTP request (``path`` may carry a query); never raises."""
        return self.respond(lambda: self._dispatch(method.upper(), path, body, content_type))

    def _dispatch(
        self, method: str, path: str, body: bytes, content_type: str | None
    ) -> dict[str, Any] | Path:
        route = route_of(path)
        if route == "/chat/completions":
            require_method(method, "POST", path)
            return self._chat(parse_chat_request(decode_json(body)))
        if route == "/responses":
            require_method(method, "POST", path)
            return self._respond(parse_responses_request(decode_json(body)))
        if route == "/embeddings":
            require_method(method, "POST", path)
            return self._embeddings(parse_embedding_request(decode_json(body)))
        if route == "/models":
            require_method(method, "GET", path)
            return {"object": "list", "data": [self._model_card()]}
        if route.startswith("/models/") and route.count("/") == 2:
            require_method(method, "GET", path)
            return self._retrieve_model(route.removeprefix("/models/"))
        if route.split("/")[1] in ("files", "batches"):
            return self.batches.handle(method, route, path, body, content_type)
        raise RequestError(f"Invalid URL ({method} {path})", status=404)

    async def upload(self, content_type: str | None, chunks: AsyncIterable[bytes]) -> LocalResponse:
        """``POST /v1/files`` with the body as it arrives: it streams to disk, whatever its
        size (``handle`` takes the same upload as one body)."""
        error: RequestError | None = None
        target: Upload | None = None
        try:
            target = self.batches.upload(content_type)
            async for chunk in chunks:
                target.feed(chunk)
        except RequestError as exc:
            error = exc
        except BaseException:  # the client went away: keep no half-written file
            if target is not None:
                target.discard()
            raise

        def finish() -> dict[str, Any]:
            if error is not None or target is None:
                raise error or RequestError("The upload could not be read.")
            return target.finish().card()

        return self.respond(finish)

    def respond(self, answer: Callable[[], dict[str, Any] | Path]) -> LocalResponse:
        """``answer()`` as a response: a payload as JSON, a Path as a file's content,
        RequestError as OpenAI's error; never raises."""
        try:
            payload = answer()
            if isinstance(payload, Path):
                headers = self._headers() | {"content-type": "application/octet-stream"}
                return LocalResponse(200, headers, b"", payload)
            return self._ok(payload)
        except RequestError as exc:
            return self._error(exc)
        except Exception as exc:  # a bug must still answer like a server, not crash it
            return self._error(
                RequestError(f"The server had an error: {exc!r}", status=500, type_="server_error")
            )

    def estimate_tokens(self, method: str, path: str, body: bytes) -> int:
        """Tokens a rate limiter charges up front: prompt + max_tokens (or a default) x n."""
        try:
            decoded = decode_json(body)
            route = route_of(path)
            if route == "/chat/completions":
                request = parse_chat_request(decoded)
                limit = request.max_tokens if request.max_tokens_given else DEFAULT_TOKEN_ESTIMATE
                return prompt_tokens_of(request) + limit * request.n
            if route == "/responses":
                chat = parse_responses_request(decoded).chat
                limit = chat.max_tokens if chat.max_tokens_given else DEFAULT_TOKEN_ESTIMATE
                return prompt_tokens_of(chat) + limit
            if route == "/embeddings":
                embedding = parse_embedding_request(decoded)
                return sum(count_tokens(text) for text in embedding.inputs)
        except RequestError:
            pass
        return 0

    def _headers(self) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "x-request-id": "req_" + secrets.token_hex(16),
            "openai-model": MODEL_ID,
        }

    def _ok(self, payload: dict[str, Any]) -> LocalResponse:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        return LocalResponse(200, self._headers(), body)

    def _error(self, exc: RequestError) -> LocalResponse:
        headers = self._headers()
        if isinstance(exc, _MethodNotAllowed):
            headers["allow"] = exc.allowed
        body = error_body(exc.message, exc.type, exc.param, exc.code)
        return LocalResponse(exc.status, headers, body)

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": MODEL_ID,
            "object": "model",
            "created": MODEL_CREATED,
            "owned_by": "seed-runner",
        }

    def _retrieve_model(self, model_id: str) -> dict[str, Any]:
        if model_id != MODEL_ID:
            raise RequestError(
                f"The model '{model_id}' does not exist.",
                "model",
                status=404,
                code="model_not_found",
            )
        return self._model_card()

    def choice_rngs(self, request: ChatRequest) -> list[random.Random]:
        """One generator per choice, as the module docstring describes."""
        if request.seed is None:
            base = secrets.token_bytes(32)
        else:
            canonical = json.dumps(
                {
                    "seed": request.seed,
                    "messages": [[m.role, m.content, m.name] for m in request.messages],
                    "temperature": request.temperature,
                    "top_p": request.top_p,
                    "presence_penalty": request.presence_penalty,
                    "frequency_penalty": request.frequency_penalty,
                },
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
            )
            material = SEED_PREFIX + self._model.fingerprint_digest.encode() + canonical.encode()
            base = hashlib.sha256(material).digest()
        return [
            random.Random(
                int.from_bytes(hashlib.sha256(base + index.to_bytes(4, "big")).digest(), "big")
            )
            for index in range(request.n)
        ]

    def generations(self, request: ChatRequest) -> tuple[list[Generation], int]:
        """Every choice of ``request`` drawn, with the format tokens ``json_object`` mode
        adds to each (0 otherwise); raises ``RequestError`` past the context window.

        Chat completions and responses both draw through here, so one seeding rule holds
        for both (a response has no ``seed``: its draws come from fresh entropy).
        """
        prompt_tokens = prompt_tokens_of(request)
        requested = prompt_tokens + (request.max_tokens if request.max_tokens_given else 0)
        if requested > CONTEXT_WINDOW:
            raise RequestError(
                f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, you "
                f"requested {requested} tokens ({prompt_tokens} in the messages). Please reduce "
                "the length of the messages or completion.",
                "messages",
                code="context_length_exceeded",
            )
        json_mode = request.response_format == "json_object"
        wrapper = len(_JSON_PREFIX) + len(_JSON_SUFFIX) if json_mode else 0
        sampling = SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=max(request.max_tokens - wrapper, 0),
            stop=request.stop,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            top_logprobs=request.top_logprobs,
        )
        drawn = [
            self._model.generate(
                request.prompt, sampling, rng, self.divergence(request), context=request.context
            )
            for rng in self.choice_rngs(request)
        ]
        schema = request.tool.parameters if request.tool else request.json_schema
        if schema is not None:
            drawn = [_structured(request, generation, schema) for generation in drawn]
        return drawn, wrapper

    def _chat(self, request: ChatRequest) -> dict[str, Any]:
        prompt_tokens = prompt_tokens_of(request)
        generations, wrapper = self.generations(request)
        json_mode = wrapper > 0
        choices, completion_tokens = [], 0
        for index, generation in enumerate(generations):
            completion_tokens += generation.completion_tokens + wrapper
            choice = _choice(index, generation, json_mode, request.top_logprobs or 0)
            if request.tool is not None:
                choice = _tool_choice(choice, request.tool.name, generation.text)
            choices.append(choice)
        return {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": self._served_fingerprint(),
        }

    def _respond(self, request: ResponsesRequest) -> dict[str, Any]:
        generations, wrapper = self.generations(request.chat)
        generation = generations[0]
        text = json_object_text(generation.text) if wrapper else generation.text
        return response_body(
            request,
            text,
            generation,
            prompt_tokens_of(request.chat),
            generation.completion_tokens + wrapper,
        )

    def divergence(self, request: ChatRequest) -> random.Random | None:
        """Noise for one choice if it is to leave its seeded path (None: it keeps to it)."""
        if request.seed is None or self._nondeterminism == 0.0:
            return None
        with self._noise_lock:
            if self._divergence_rng.random() >= self._nondeterminism:
                return None
            return random.Random(self._divergence_rng.getrandbits(64))

    def _served_fingerprint(self) -> str:
        if len(self._fingerprints) == 1:
            return self._fingerprints[0]
        with self._noise_lock:
            return self._fingerprints[self._fingerprint_rng.randrange(len(self._fingerprints))]

    def _embeddings(self, request: EmbeddingRequest) -> dict[str, Any]:
        data = []
        for index, text in enumerate(request.inputs):
            vector = embed(text, request.dimensions)
            encoded: list[float] | str = (
                encode_base64(vector) if request.encoding_format == "base64" else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(count_tokens(text) for text in request.inputs)
        return {
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def decode_json(body: bytes) -> object:
    def reject_constant(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(body, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise RequestError(
            "We could not parse the JSON body of your request. The OpenAI-compatible API "
            "expects a JSON payload; send the body as application/json."
        ) from None


def _json_escape(token: str) -> str:
    return json.dumps(token, ensure_ascii=False)[1:-1]


def _logprob_entry(
    token: str, logprob: float, top: tuple[tuple[str, float], ...]
) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": alt, "logprob": alt_logprob, "bytes": list(alt.encode())}
            for alt, alt_logprob in top
        ],
    }


def _logprobs(entries: tuple[TokenLogprob, ...], json_mode: bool, k: int) -> list[dict[str, Any]]:
    if not json_mode:
        return [_logprob_entry(e.token, e.logprob, e.top) for e in entries]

    def forced(token: str) -> dict[str, Any]:
        # Format tokens are fixed by the response format: probability 1.
        return _logprob_entry(token, 0.0, ((token, 0.0),) if k else ())

    escaped = [
        _logprob_entry(
            _json_escape(e.token), e.logprob, tuple((_json_escape(t), lp) for t, lp in e.top)
        )
        for e in entries
    ]
    return [forced(t) for t in _JSON_PREFIX] + escaped + [forced(t) for t in _JSON_SUFFIX]


def _structured(request: ChatRequest, generation: Generation, schema: dict[str, Any]) -> Generation:
    """The reply to a ``json_schema`` request (or a tool call's arguments): an instance of
    its schema made from the drawn text, cut at the request's token limit like any reply
    (then it is broken JSON, as a real model's is: see ``runner.localmodel.structured``)."""
    tokens = tokenize(instance(schema, generation.text))
    cut = len(tokens) > request.max_tokens
    kept = tuple(tokens[: request.max_tokens])
    return Generation(
        text="".join(kept),
        tokens=kept,
        completion_tokens=len(kept),
        finish_reason="length" if cut else "stop",
    )


def _tool_choice(choice: dict[str, Any], name: str, arguments: str) -> dict[str, Any]:
    """A chat choice that calls the function ``name`` instead of replying in text."""
    call = {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    message = {**choice["message"], "content": None, "tool_calls": [call]}
    cut = choice["finish_reason"] == "length"
    return {**choice, "message": message, "finish_reason": "length" if cut else "tool_calls"}


def json_object_text(text: str) -> str:
    """``text`` as ``json_object`` mode returns it: ``{"text": "..."}``."""
    return "".join(_JSON_PREFIX) + _json_escape(text) + "".join(_JSON_SUFFIX)


def _choice(index: int, generation: Generation, json_mode: bool, k: int) -> dict[str, Any]:
    content = json_object_text(generation.text) if json_mode else generation.text
    logprobs = None
    if generation.logprobs is not None:
        logprobs = {
            "content": _logprobs(generation.logprobs, json_mode, k),
            "refusal": None,
        }
    return {
        "index": index,
        "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
        "logprobs": logprobs,
        "finish_reason": generation.finish_reason,
    }
