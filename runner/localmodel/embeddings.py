"""Embeddings of the local endpoint: signed hashed bag-of-words vectors, L2-normalised.

This module owns the vector for a text. Each lower-cased word (weight 1) and each pair of
adjacent words (weight 0.5) is hashed with BLAKE2b, never Python's ``hash()``, to a
dimension and a sign, so vectors are identical in every process. Texts that share words
point the same way, which is what measuring output similarity by cosine distance needs.
The vectors do not depend on the model variant: they are the yardstick, not the model.
Values are rounded to float32, so the ``float`` and ``base64`` encodings carry the same
numbers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import struct

from runner.localmodel.tokenizer import keywords

__all__ = ["embed", "encode_base64"]

_PERSON = b"seedrun-embed"


def _slot(feature: str, dimensions: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8, person=_PERSON).digest()
    index = int.from_bytes(digest[:6], "big") % dimensions
    return index, 1.0 if digest[7] & 1 else -1.0


def embed(text: str, dimensions: int) -> list[float]:
    """The unit vector of ``text`` (all zeros for a text without words)."""
    vector = [0.0] * dimensions
    words = keywords(text)
    features = [(word, 1.0) for word in words]
    features.extend((f"{first} {second}", 0.5) for first, second in itertools.pairwise(words))
    for feature, weight in features:
        index, sign = _slot(feature, dimensions)
        vector[index] += sign * weight
    norm = math.sqrt(math.fsum(value * value for value in vector))
    if norm == 0.0:
        return vector
    packed = struct.pack(f"<{dimensions}f", *(value / norm for value in vector))
    return list(struct.unpack(f"<{dimensions}f", packed))


def encode_base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32 values."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
