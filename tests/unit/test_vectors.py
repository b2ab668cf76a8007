"""Stored embedding vectors: float32 bytes, restored bodies, cosine similarity."""

from __future__ import annotations

import struct

import pytest

from runner.analysis.similarity import cosine_distance
from runner.kinds import vectors


def test_pack_and_unpack_keep_float32_values() -> None:
    rows = [[0.1, -0.2, 0.3], [1.0, 0.0, -1.0]]
    blob, dimensions = vectors.pack(rows)
    assert dimensions == 3 and len(blob) == 6 * 4
    back = vectors.unpack(blob, dimensions)
    as_float32 = [list(struct.unpack("<3f", struct.pack("<3f", *row))) for row in rows]
    assert back == as_float32
    with pytest.raises(ValueError, match="different numbers of dimensions"):
        vectors.pack([[1.0], [1.0, 2.0]])


def test_a_stripped_response_is_restored_in_the_form_it_came() -> None:
    floats = [0.25, -0.5]
    encoded = vectors.stripped(
        {"data": [{"index": 0, "embedding": floats}, {"index": 1, "embedding": "AACAPwAAAMA="}]}
    )
    assert [item["embedding"] for item in encoded["data"]] == [None, ""]
    blob, dimensions = vectors.pack([floats, vectors.decode_base64("AACAPwAAAMA=")])
    restored = vectors.restored(encoded, blob, dimensions)
    assert restored["data"][0]["embedding"] == floats
    assert restored["data"][1]["embedding"] == "AACAPwAAAMA="  # [1.0, -2.0], the same bytes


def test_cosine_similarity_is_the_mean_over_rows() -> None:
    a, dims = vectors.pack([[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]])
    b, _ = vectors.pack([[1.0, 0.0], [0.8, 0.6], [0.0, 0.0]])
    expected = (1.0 + (1 - cosine_distance([0.6, 0.8], [0.8, 0.6])) + 1.0) / 3
    assert vectors.cosine_similarity(a, b, dims) == pytest.approx(expected, abs=1e-6)
    zero_vs_real = vectors.cosine_similarity(*[vectors.pack([v])[0] for v in ([0, 0], [1, 0])], 2)
    assert zero_vs_real == 0.0
    assert vectors.cosine_similarity(a, b[:8], dims) is None  # not the same number of vectors
