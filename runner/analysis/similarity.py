"""How alike two outputs are: the pure measures behind compare, diff and verify.

* ``similarity``: normalised Levenshtein similarity, ``1 - distance / max(len)``, in
  [0, 1] (1: identical), computed by rapidfuzz on characters;
* ``divergence_offset``: the first character at which two texts differ;
* ``word_diff``: a word-level diff, as (op, text) pieces;
* ``mean_pairwise_similarity``: the mean similarity over all pairs of K outputs;
* ``cosine_distance``: ``1 - cos`` between two embedding vectors, as OpenAI's
  ``distances_from_embeddings`` measures it.

No I/O here.
"""

from __future__ import annotations

import difflib
import enum
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Words with the whitespace after them (and any leading whitespace on its own), so a
# diff rebuilds the text exactly and never "matches" a lone space between two changes.
_WORDS = re.compile(r"^\s+|\S+\s*")


def similarity(a: str, b: str) -> float:
    """Normalised edit-distance similarity: 1.0 for identical texts, 0.0 for nothing shared."""
    if a == b:
        return 1.0
    from rapidfuzz.distance import Levenshtein  # here: `runner --help` needs none of it

    return float(Levenshtein.normalized_similarity(a, b))


def divergence_offset(a: str, b: str) -> int | None:
    """The index of the first character where ``a`` and ``b`` differ; None if identical.

    When one text is a prefix of the other, it is the length of the shorter one.
    """
    if a == b:
        return None
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def mean_pairwise_similarity(texts: Sequence[str]) -> float | None:
    """The mean ``similarity`` over every pair of ``texts``; None for fewer than two."""
    if len(texts) < 2:
        return None
    scores = [similarity(a, b) for a, b in itertools.combinations(texts, 2)]
    return math.fsum(scores) / len(scores)


def cosine_distance(u: Sequence[float], v: Sequence[float]) -> float:
    """``1 - cosine similarity``; 0.0 for the same direction, 1.0 for orthogonal vectors."""
    if len(u) != len(v):
        raise ValueError(f"vectors of different lengths: {len(u)} and {len(v)}")
    dot = math.fsum(x * y for x, y in zip(u, v, strict=True))
    norms = math.sqrt(math.fsum(x * x for x in u)) * math.sqrt(math.fsum(y * y for y in v))
    if norms == 0.0:
        return 0.0 if not any(u) and not any(v) else 1.0
    return max(0.0, 1.0 - dot / norms)


class DiffOp(enum.StrEnum):
    """What a piece of a word diff is."""

    EQUAL = "equal"  # in both texts
    DELETE = "delete"  # only in the first (older) text
    INSERT = "insert"  # only in the second (newer) text


@dataclass(frozen=True)
class DiffPiece:
    op: DiffOp
    text: str


def word_diff(a: str, b: str) -> list[DiffPiece]:
    """A word-level diff of ``a`` -> ``b``; joining the EQUAL+DELETE pieces gives ``a``."""
    words_a = _WORDS.findall(a)
    words_b = _WORDS.findall(b)
    matcher = difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False)
    pieces: list[DiffPiece] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pieces.append(DiffPiece(DiffOp.EQUAL, "".join(words_a[i1:i2])))
            continue
        if i2 > i1:
            pieces.append(DiffPiece(DiffOp.DELETE, "".join(words_a[i1:i2])))
        if j2 > j1:
            pieces.append(DiffPiece(DiffOp.INSERT, "".join(words_b[j1:j2])))
    return pieces
