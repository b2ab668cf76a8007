"""The built-in local model: a small seeded language model behind the OpenAI protocol.

It is honestly small (a topic-conditioned word trigram model trained on ~36 KB of prose
shipped in ``corpus.txt``), but everything around it is real: the OpenAI request and
response shapes, seeds that reproduce byte for byte in any process, a ``system_fingerprint``
that changes with the model, embeddings, OpenAI-style errors and rate limits.

Modules
    tokenizer   text <-> tokens; usage counts
    corpus      the shipped training text, its topic sections and prompt scoring
    sampling    the arithmetic of one draw: temperature, nucleus, penalties, stops, and
                the other token a diverging server takes
    model       training, the distributions and the sampler
    params      request validation with OpenAI's error semantics
    embeddings  hashed bag-of-words vectors
    responses   the Responses API's request checks and response object
    service     the transport-agnostic protocol core (``LocalModelService.handle``, and
                ``complete`` for a body as a dict), seeding, server-side noise
    transport   ``httpx2`` transports for the openai SDK, no socket
    files       the Batch API's files on disk, uploads parsed as they stream
    batchinput  batch input validation, one line's execution, result-line shapes
    batches     the Batch API: routes, lifecycle, background tasks, test knobs
    streaming   ``stream: true`` replies as server-sent events (for ``server``)
    server      Starlette + uvicorn, with latency, rate limits and faults (import it
                explicitly: it pulls in the server stack)
"""

from runner.localmodel.service import MODEL_ID, LocalModelService, LocalResponse
from runner.localmodel.transport import LOCAL_BASE_URL, LocalSyncTransport, LocalTransport

__all__ = [
    "LOCAL_BASE_URL",
    "MODEL_ID",
    "LocalModelService",
    "LocalResponse",
    "LocalSyncTransport",
    "LocalTransport",
]
