"""How an embeddings run's vectors are stored: little-endian float32 bytes, one blob.

``runs.embedding`` holds every input's vector, in input order, back to back; with
``runs.embedding_dimensions`` it splits into rows. float32 is what OpenAI's embeddings are
(``encoding_format: base64`` sends exactly these bytes), so nothing is lost, and a vector
takes 4 bytes a dimension instead of the ~20 of its JSON text (BENCHMARKS.md measures it).

Equality of two runs' vectors is equality of these bytes; their likeness is the mean
cosine similarity of corresponding rows.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any

__all__ = ["cosine_similarity", "decode_base64", "pack", "restored", "stripped", "unpack"]


def pack(vectors: Sequence[Sequence[float]]) -> tuple[bytes, int]:
    """(float32 bytes of every vector, dimensions); ValueError if their lengths differ."""
    dimensions = len(vectors[0]) if vectors else 0
    if any(len(vector) != dimensions for vector in vectors):
        raise ValueError("the embeddings have different numbers of dimensions")
    flat = [value for vector in vectors for value in vector]
    return struct.pack(f"<{len(flat)}f", *flat), dimensions


def decode_base64(text: str) -> list[float]:
    """A vector sent with ``encoding_format: base64`` (little-endian float32)."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError("a base64 embedding is not whole float32 values")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def stripped(data: dict[str, Any]) -> dict[str, Any]:
    """An embeddings response with each vector taken out: ``null`` where it was a list of
    floats, ``""`` where it was base64 (so :func:`restored` gives it back in its form)."""
    items = data.get("data") or []
    return {
        **data,
        "data": [
            {**item, "embedding": "" if isinstance(item.get("embedding"), str) else None}
            for item in items
        ],
    }


def restored(response: dict[str, Any], blob: bytes, dimensions: int) -> dict[str, Any]:
    """The response :func:`stripped` made, with its vectors back from the stored blob
    (floats as their float32 values; base64 as the same bytes)."""
    rows = unpack(blob, dimensions)
    items = sorted(response.get("data") or [], key=lambda item: item.get("index") or 0)
    data = []
    for item, row in zip(items, rows, strict=False):
        if item.get("embedding") == "":
            value: Any = base64.b64encode(struct.pack(f"<{len(row)}f", *row)).decode("ascii")
        else:
            value = row
        data.append({**item, "embedding": value})
    return {**response, "data": data}


def unpack(blob: bytes, dimensions: int) -> list[list[float]]:
    """The vectors of a stored blob, as Python floats (each exactly its float32)."""
    values = struct.unpack(f"<{len(blob) // 4}f", blob)
    if dimensions <= 0:
        return []
    return [list(values[i : i + dimensions]) for i in range(0, len(values), dimensions)]


def cosine_similarity(a: bytes, b: bytes, dimensions: int) -> float | None:
    """Mean cosine similarity of corresponding vectors of two blobs; None when they do
    not hold the same number of vectors of ``dimensions`` (nothing to pair)."""
    import numpy as np

    if len(a) != len(b) or not a or dimensions <= 0:
        return None
    left = np.frombuffer(a, dtype="<f4").astype(np.float64).reshape(-1, dimensions)
    right = np.frombuffer(b, dtype="<f4").astype(np.float64).reshape(-1, dimensions)
    norm_a, norm_b = np.linalg.norm(left, axis=1), np.linalg.norm(right, axis=1)
    norms = norm_a * norm_b
    dots = np.einsum("ij,ij->i", left, right)
    # A zero vector (a text without words) has no direction: two of them are equal (1),
    # one against a real vector is unlike it (0).
    both_zero = (norm_a == 0) & (norm_b == 0)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), both_zero * 1.0)
    return float(np.clip(cosine, -1.0, 1.0).mean())
