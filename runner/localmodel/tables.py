"""The local model's data: hyperparameters, weighted n-gram counts, next-token distributions.

:class:`Table` turns the counts of one topic (or none) into smoothed next-token
distributions, lazily and memoised; :class:`Primed` is the same table seen through a
conversation's context (the system prompt and earlier turns): every candidate the context
holds weighs ``PRIMING`` times more, as a cache language model (Kuhn & De Mori 1990) or an
instruction-tuned model's in-context priming moves it; nothing outside the candidates is
added, so the text stays what the corpus allows. ``model.py`` owns training and sampling;
the determinism rules of its docstring hold here too.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, field, replace

from runner.localmodel.sampling import Shaped, nucleus, temper

__all__ = ["Counts", "Dist", "Hyperparameters", "Level", "Primed", "Table"]

_CACHE_LIMIT = 200_000  # distributions kept per table before its memo is dropped and rebuilt
_SHAPES_LIMIT = 16  # (temperature, top_p) caches kept per table
PRIMING = 3.0
"""Weight of a candidate the conversation's context holds, relative to one it does not."""


@dataclass(frozen=True)
class Hyperparameters:
    """Everything besides the corpus that shapes the model's distributions."""

    trigram_prior: float = 3.0  # weight of the bigram distribution inside a trigram context
    bigram_prior: float = 3.0  # weight of the unigram distribution inside a bigram context
    topic_weight: float = 5.0  # extra weight of the chosen topic's counts over the corpus's
    candidates: int = 48  # words kept per trigram context (>= MAX_TOP_LOGPROBS)
    bigram_candidates: int = 56
    unigram_candidates: int = 96
    variant: str | None = None  # simulated backend update; changes data weights and priors

    @classmethod
    def for_variant(cls, variant: str | None) -> Hyperparameters:
        """Default hyperparameters, perturbed deterministically by the variant's name."""
        if variant is None:
            return cls()
        base = cls()
        return replace(
            base,
            trigram_prior=round(base.trigram_prior * (0.5 + _unit(variant, "trigram")), 6),
            bigram_prior=round(base.bigram_prior * (0.5 + _unit(variant, "bigram")), 6),
            topic_weight=round(base.topic_weight * (0.5 + _unit(variant, "topic")), 6),
            variant=variant,
        )

    def paragraph_weight(self, topic: str, index: int) -> float:
        """Training weight of one corpus paragraph: 1 by default, 0.25..1.75 in a variant."""
        if self.variant is None:
            return 1.0
        return 0.25 + 1.5 * _unit(self.variant, f"{topic}:{index}")


Dist = tuple[tuple[int, ...], tuple[float, ...]]  # candidates by falling probability, probs


@dataclass
class Level:
    """Weighted counts of one n-gram order: context -> {token: count}, context -> total."""

    rows: dict[int, dict[int, float]] = field(default_factory=dict)
    totals: dict[int, float] = field(default_factory=dict)

    def add(self, context: int, token: int, weight: float) -> None:
        row = self.rows.setdefault(context, {})
        row[token] = row.get(token, 0.0) + weight
        self.totals[context] = self.totals.get(context, 0.0) + weight


@dataclass
class Counts:
    trigram: Level = field(default_factory=Level)  # context: previous two tokens as one key
    bigram: Level = field(default_factory=Level)  # context: previous token
    unigram: dict[int, float] = field(default_factory=dict)

    def add(self, key: int, last: int, token: int, weight: float) -> None:
        self.trigram.add(key, token, weight)
        self.bigram.add(last, token, weight)
        self.unigram[token] = self.unigram.get(token, 0.0) + weight


class _Shaping:
    """Sampling weights per (temperature, top_p) over ``dist``, memoised per context key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shapes: dict[tuple[float, float], dict[int, Shaped]] = {}

    def dist(self, key: int) -> Dist:
        raise NotImplementedError

    def shapes(self, temperature: float, top_p: float) -> dict[int, Shaped]:
        """The memo of shaped distributions for one (temperature, top_p)."""
        shape_key = (temperature, top_p)
        memo = self._shapes.get(shape_key)
        if memo is None:
            with self._lock:
                if len(self._shapes) >= _SHAPES_LIMIT:
                    self._shapes.clear()
                memo = self._shapes.setdefault(shape_key, {})
        return memo

    def shaped(self, key: int, temperature: float, top_p: float, memo: dict[int, Shaped]) -> Shaped:
        """Cumulative weights for sampling at ``key``; stored in ``memo``."""
        tokens, probs = self.dist(key)
        if temperature == 0.0:
            entry: Shaped = ((tokens[0],), (1.0,), 1.0)
        else:
            entry = nucleus(tokens, temper(probs, temperature), top_p)
        if len(memo) >= _CACHE_LIMIT:
            memo.clear()
        memo[key] = entry
        return entry


class Table(_Shaping):
    """Distributions for one topic (or none), computed lazily and memoised."""

    def __init__(
        self,
        corpus: Counts,
        topic: Counts | None,
        hp: Hyperparameters,
        vocab_size: int,
        free_words: frozenset[int],
    ) -> None:
        self._corpus = corpus
        self._topic = topic
        self._hp = hp
        self._v = vocab_size
        self._weight = hp.topic_weight if topic is not None else 0.0
        super().__init__()
        self._bigram: dict[int, Dist] = {}
        self._trigram: dict[int, Dist] = {}
        self._unigram = self._unigram_dist(free_words)

    def _unigram_dist(self, free_words: frozenset[int]) -> dict[int, float]:
        # Only tokens that may follow any word: words with their leading space, punctuation.
        topic = self._topic.unigram if self._topic is not None else {}
        weights = [
            (token, count + self._weight * topic.get(token, 0.0))
            for token, count in self._corpus.unigram.items()
            if token in free_words
        ]
        weights.sort(key=lambda item: (-item[1], item[0]))
        kept = weights[: self._hp.unigram_candidates]
        total = math.fsum(weight for _, weight in kept)
        return {token: weight / total for token, weight in kept}

    def _smooth(
        self,
        corpus: Level,
        topic: Level | None,
        context: int,
        lower: dict[int, float],
        prior: float,
        keep: int,
    ) -> Dist:
        """(count + topic_weight * topic count + prior * lower) / (total + prior), top ``keep``."""
        corpus_row = corpus.rows.get(context, {})
        total = corpus.totals.get(context, 0.0)
        topic_row: dict[int, float] = {}
        if topic is not None:
            topic_row = topic.rows.get(context, {})
            total += self._weight * topic.totals.get(context, 0.0)
        candidates = list(corpus_row)
        candidates.extend(token for token in lower if token not in corpus_row)
        denominator, weight = total + prior, self._weight
        scored = [
            (
                token,
                (
                    corpus_row.get(token, 0.0)
                    + weight * topic_row.get(token, 0.0)
                    + prior * lower.get(token, 0.0)
                )
                / denominator,
            )
            for token in candidates
        ]
        scored.sort(key=lambda item: (-item[1], item[0]))
        kept = [item for item in scored[:keep] if item[1] > 0.0]
        norm = math.fsum(prob for _, prob in kept)
        return tuple(token for token, _ in kept), tuple(prob / norm for _, prob in kept)

    def bigram(self, last: int) -> Dist:
        dist = self._bigram.get(last)
        if dist is None:
            hp, topic = self._hp, self._topic
            dist = self._smooth(
                self._corpus.bigram,
                topic.bigram if topic is not None else None,
                last,
                self._unigram,
                hp.bigram_prior,
                hp.bigram_candidates,
            )
            self._bigram[last] = dist
        return dist

    def dist(self, key: int) -> Dist:
        """P(token | context key), candidates sorted by falling probability then token id."""
        dist = self._trigram.get(key)
        if dist is None:
            tokens, probs = self.bigram(key % self._v)
            lower = dict(zip(tokens, probs, strict=True))
            hp, topic = self._hp, self._topic
            dist = self._smooth(
                self._corpus.trigram,
                topic.trigram if topic is not None else None,
                key,
                lower,
                hp.trigram_prior,
                hp.candidates,
            )
            if len(self._trigram) >= _CACHE_LIMIT:
                self._trigram.clear()
                self._bigram.clear()
            self._trigram[key] = dist
        return dist


class Primed(_Shaping):
    """``table`` with the candidates in ``primed`` weighted ``PRIMING`` times, renormalised."""

    def __init__(self, table: Table, primed: frozenset[int]) -> None:
        super().__init__()
        self._table = table
        self._primed = primed
        self._dists: dict[int, Dist] = {}

    def dist(self, key: int) -> Dist:
        dist = self._dists.get(key)
        if dist is None:
            tokens, probs = self._table.dist(key)
            primed = self._primed
            if any(token in primed for token in tokens):
                scored = [
                    (token, prob * PRIMING if token in primed else prob)
                    for token, prob in zip(tokens, probs, strict=True)
                ]
                scored.sort(key=lambda item: (-item[1], item[0]))
                norm = math.fsum(weight for _, weight in scored)
                dist = tuple(token for token, _ in scored), tuple(w / norm for _, w in scored)
            else:
                dist = tokens, probs
            if len(self._dists) >= _CACHE_LIMIT:
                self._dists.clear()
            self._dists[key] = dist
        return dist


def _unit(variant: str, label: str) -> float:
    """A number in [0, 1) from a stable hash of (variant, label)."""
    digest = hashlib.blake2b(f"{variant}\0{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
