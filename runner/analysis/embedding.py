"""Embedding distance between outputs, measured through an endpoint's ``/v1/embeddings``.

This module owns the one call seed-runner makes to an endpoint outside the queue:
``runner compare --embeddings`` sends the compared outputs to ``/v1/embeddings`` (the
built-in ``local`` endpoint serves one) and measures the cosine distance of each pair,
as OpenAI's reproducibility cookbook does. The SDK's errors are translated here into
one ``RunnerError`` line; API keys are read from the named variable and redacted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from runner.analysis.similarity import cosine_distance
from runner.config import EndpointConfig
from runner.errors import ConfigError, RunnerError

if TYPE_CHECKING:
    import openai

# The SDK (a second or two to import) is imported by the functions that call an
# endpoint: `runner compare` without --embeddings never loads it.

DEFAULT_MODEL = "text-embedding-3-small"
INPUTS_PER_REQUEST = 256


def _client(config: EndpointConfig, env: Mapping[str, str]) -> tuple[openai.AsyncOpenAI, str]:
    import httpx2
    import openai

    if config.type == "local":
        from runner.localmodel import LOCAL_BASE_URL, LocalModelService, LocalTransport

        http = httpx2.AsyncClient(transport=LocalTransport(LocalModelService(config.variant)))
        return openai.AsyncOpenAI(
            api_key="local", base_url=LOCAL_BASE_URL, max_retries=0, http_client=http
        ), ""
    key_env = config.api_key_env or ""
    api_key = env.get(key_env, "") if key_env else ""
    if key_env and not api_key:
        raise ConfigError(
            f"endpoint {config.name!r}: the environment variable {key_env} "
            "is not set (it must hold the API key)"
        )
    # Not queue work: no rate limiter or attempt count to bypass, so the SDK may retry.
    client = openai.AsyncOpenAI(
        api_key=api_key or "none",
        base_url=config.base_url,
        max_retries=2,
        timeout=config.timeout,
        http_client=httpx2.AsyncClient(timeout=config.timeout),
    )
    return client, api_key


async def embed_texts(
    config: EndpointConfig,
    model: str,
    texts: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
) -> list[list[float]]:
    """The embedding of every text (non-empty), in order."""
    import openai

    from runner.endpoints.client import Redactor

    client, api_key = _client(config, os.environ if env is None else env)
    redact = Redactor(api_key)
    vectors: list[list[float]] = []
    where = f"embeddings through endpoint {config.name!r} (model {model!r})"
    try:
        for start in range(0, len(texts), INPUTS_PER_REQUEST):
            chunk = list(texts[start : start + INPUTS_PER_REQUEST])
            response = await client.embeddings.create(model=model, input=chunk)
            data = sorted(response.data, key=lambda d: d.index)
            if len(data) != len(chunk):
                raise RunnerError(f"{where}: {len(chunk)} texts sent, {len(data)} vectors back")
            vectors.extend([float(x) for x in d.embedding] for d in data)
    except openai.APIStatusError as exc:
        raise RunnerError(
            redact(f"{where} failed: HTTP {exc.status_code}: {exc.message}")[:500]
            + "; choose another with --embeddings-endpoint / --embeddings-model"
        ) from None
    except openai.APIError as exc:
        raise RunnerError(redact(f"{where} failed: {exc.message}")[:500]) from None
    finally:
        await client.close()
    return vectors


async def embedding_distances(
    config: EndpointConfig,
    model: str,
    pairs: Sequence[tuple[str, str] | None],
    *,
    env: Mapping[str, str] | None = None,
) -> list[float | None]:
    """The cosine distance of each pair of texts; None where a pair is None or has an
    empty text (an endpoint cannot embed nothing). Each distinct text is embedded once."""
    texts = sorted({t for pair in pairs if pair is not None for t in pair if t})
    vectors = dict(zip(texts, await embed_texts(config, model, texts, env=env), strict=True))
    distances: list[float | None] = []
    for pair in pairs:
        if pair is None or not pair[0] or not pair[1]:
            distances.append(None)
        else:
            distances.append(cosine_distance(vectors[pair[0]], vectors[pair[1]]))
    return distances
