"""The local language model: a topic-conditioned word trigram model with backoff.

This module owns the model's data and its sampler. It trains at first use (about 40 ms)
from the corpus shipped beside it (see ``corpus.py``), once per process and variant, and
memoises every distribution it derives. Everything here is a pure function of the corpus bytes,
the hyperparameters and the random generator handed in, so a caller that derives that
generator from the request gets the same text in every process.

How a completion is made
    1. The keywords of the prompt score each topic section (tf-idf over sections); the
       choice's generator draws a topic in proportion to the squared score (greedy picks
       the best). A prompt that matches nothing uses the topic-free mixture.
    2. Tokens are drawn one by one from P(w | two previous tokens): interpolated counts of
       the chosen topic (weighted ``topic_weight``) and of the whole corpus, backing off to
       bigram and unigram distributions (Dirichlet smoothing with ``*_prior``), cut to the
       ``candidates`` most likely words. After a sentence end the context restarts, so any
       sentence opening of the topic may follow.
    3. Temperature reshapes the candidates (p ** (1 / T)), top_p keeps the smallest prefix
       holding that share of the mass, and one uniform draw picks a token by bisection over
       cumulative weights. Temperature 0 takes the most likely candidate.

The plain path (no stop strings, penalties or logprobs) uses per-context cumulative weights
cached per (temperature, top_p); the general path computes the same numbers, so asking for
logprobs or stop strings never changes which tokens are drawn.

Simulated nondeterminism (``generate(..., noise=...)``) takes the general path: it draws the
deterministic path once to learn its length, then again with one draw replaced by another
plausible token, the way a server whose batch-dependent kernels moved a logit diverges.

Determinism rules kept here: no ``hash()``, no set iteration, no global random state; token
ids, counts and candidate order follow the corpus order; float totals go through
``math.fsum`` (exact) or plain IEEE additions, never ``sum()``, whose float algorithm changed
in Python 3.12. Temperatures other than 0 and 1, penalties and logprobs also use libm's
pow/exp/log: a last-bit difference between two platforms' libms could only move a draw that
lands within about 1e-16 of a bucket edge.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
from bisect import bisect_right
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from runner.localmodel.corpus import TopicIndex, corpus_text, parse_sections
from runner.localmodel.sampling import (
    SamplingParams,
    Shaped,
    alternative,
    find_stop,
    nucleus,
    penalise,
    temper,
)
from runner.localmodel.tokenizer import is_sentence_end, tokenize

__all__ = [
    "MAX_TOP_LOGPROBS",
    "SAMPLER_VERSION",
    "Generation",
    "Hyperparameters",
    "LanguageModel",
    "SamplingParams",
    "TokenLogprob",
    "corpus_text",
    "load_model",
]

SAMPLER_VERSION = "trigram-sampler/1"
"""Bump whenever sampling arithmetic changes: it enters the fingerprint and every seed."""

MAX_TOP_LOGPROBS = 20

_EOS, _START, _PARA = 0, 1, 2  # end of text, sentence-start marker, paragraph-start marker
_SPECIALS = ("", "<s>", "<p>")
_CACHE_LIMIT = 200_000  # distributions kept per table before its memo is dropped and rebuilt
_SHAPES_LIMIT = 16  # (temperature, top_p) caches kept per table


@dataclass(frozen=True)
class Hyperparameters:
    """Everything besides the corpus that shapes the model's distributions."""

    trigram_prior: float = 0.35  # weight of the bigram distribution inside a trigram context
    bigram_prior: float = 0.8  # weight of the unigram distribution inside a bigram context
    topic_weight: float = 30.0  # extra weight of the chosen topic's counts over the corpus's
    candidates: int = 24  # words kept per trigram context (>= MAX_TOP_LOGPROBS)
    bigram_candidates: int = 32
    unigram_candidates: int = 48
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


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the k most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Generation:
    """One completion: text, the tokens it was built from, and why it ended."""

    text: str
    tokens: tuple[str, ...]
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    logprobs: tuple[TokenLogprob, ...] | None = None


_Dist = tuple[tuple[int, ...], tuple[float, ...]]  # candidates by falling probability, probs


@dataclass
class _Level:
    """Weighted counts of one n-gram order: context -> {token: count}, context -> total."""

    rows: dict[int, dict[int, float]] = field(default_factory=dict)
    totals: dict[int, float] = field(default_factory=dict)

    def add(self, context: int, token: int, weight: float) -> None:
        row = self.rows.setdefault(context, {})
        row[token] = row.get(token, 0.0) + weight
        self.totals[context] = self.totals.get(context, 0.0) + weight


@dataclass
class _Counts:
    trigram: _Level = field(default_factory=_Level)  # context: previous two tokens as one key
    bigram: _Level = field(default_factory=_Level)  # context: previous token
    unigram: dict[int, float] = field(default_factory=dict)

    def add(self, key: int, last: int, token: int, weight: float) -> None:
        self.trigram.add(key, token, weight)
        self.bigram.add(last, token, weight)
        self.unigram[token] = self.unigram.get(token, 0.0) + weight


class _Table:
    """Distributions for one topic (or none), computed lazily and memoised."""

    def __init__(
        self,
        corpus: _Counts,
        topic: _Counts | None,
        hp: Hyperparameters,
        vocab_size: int,
        free_words: frozenset[int],
    ) -> None:
        self._corpus = corpus
        self._topic = topic
        self._hp = hp
        self._v = vocab_size
        self._weight = hp.topic_weight if topic is not None else 0.0
        self._lock = threading.Lock()
        self._bigram: dict[int, _Dist] = {}
        self._trigram: dict[int, _Dist] = {}
        self._shapes: dict[tuple[float, float], dict[int, Shaped]] = {}
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
        corpus: _Level,
        topic: _Level | None,
        context: int,
        lower: dict[int, float],
        prior: float,
        keep: int,
    ) -> _Dist:
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

    def bigram(self, last: int) -> _Dist:
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

    def dist(self, key: int) -> _Dist:
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


def _unit(variant: str, label: str) -> float:
    """A number in [0, 1) from a stable hash of (variant, label)."""
    digest = hashlib.blake2b(f"{variant}\0{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class LanguageModel:
    """The trained model; safe to share between threads and tasks."""

    def __init__(self, text: str, hp: Hyperparameters) -> None:
        self.hyperparameters = hp
        self.fingerprint_digest = hashlib.sha256(
            "\0".join((SAMPLER_VERSION, json.dumps(asdict(hp), sort_keys=True), text)).encode()
        ).hexdigest()
        sections = parse_sections(text)
        self._vocab: list[str] = list(_SPECIALS)
        self._ids: dict[str, int] = {}
        documents: list[tuple[str, list[list[int]]]] = []
        for name, texts in sections:
            documents.append((name, [[self._intern(t) for t in tokenize(p)] for p in texts]))
        self._break = self._intern("\n\n")
        self._v = len(self._vocab)
        self._reset = [0] * self._v  # context key after a token that restarts it, 0 = none
        for token_id, token in enumerate(self._vocab):
            if is_sentence_end(token):
                self._reset[token_id] = _START * self._v + _START
        self._reset[self._break] = _START * self._v + _PARA
        self._start_key = _START * self._v + _PARA
        corpus_counts = _Counts()
        topic_counts: list[_Counts] = []
        for name, token_ids in documents:
            counts = _Counts()
            self._count(name, token_ids, hp, (corpus_counts, counts))
            topic_counts.append(counts)
        free_words = frozenset(
            token_id
            for token_id, token in enumerate(self._vocab)
            if token_id >= len(_SPECIALS) and token != "\n\n" and not token[:1].isalnum()
        )
        self._general = _Table(corpus_counts, None, hp, self._v, free_words)
        self._tables = [
            _Table(corpus_counts, counts, hp, self._v, free_words) for counts in topic_counts
        ]
        self._topics = TopicIndex(sections)

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics.names

    @property
    def vocabulary_size(self) -> int:
        return self._v - len(_SPECIALS)

    def _intern(self, token: str) -> int:
        token_id = self._ids.get(token)
        if token_id is None:
            token_id = len(self._vocab)
            self._ids[token] = token_id
            self._vocab.append(token)
        return token_id

    def _count(
        self,
        name: str,
        paragraphs: list[list[int]],
        hp: Hyperparameters,
        sinks: tuple[_Counts, _Counts],
    ) -> None:
        key, last = self._start_key, _PARA
        for index, paragraph in enumerate(paragraphs):
            weight = hp.paragraph_weight(name, index)
            ending = [self._break] if index + 1 < len(paragraphs) else [_EOS]
            for token in paragraph + ending:
                for sink in sinks:
                    sink.add(key, key % self._v, token, weight)
                if token == _EOS:
                    break
                reset = self._reset[token]
                key = reset if reset else last * self._v + token
                last = token

    def topic_scores(self, prompt: str) -> list[float]:
        """tf-idf score of each topic section for the prompt's keywords."""
        return self._topics.scores(prompt)

    def _choose_table(self, prompt: str, rng: random.Random, greedy: bool) -> _Table:
        scores = self.topic_scores(prompt)
        weights = [score * score for score in scores]
        if not any(weights):
            return self._general
        if greedy:
            return self._tables[weights.index(max(weights))]
        cumulative: list[float] = []
        running = 0.0
        for weight in weights:
            running += weight
            cumulative.append(running)
        index = bisect_right(cumulative, rng.random() * running)
        return self._tables[min(index, len(weights) - 1)]

    def generate(
        self,
        prompt: str,
        params: SamplingParams,
        rng: random.Random,
        noise: random.Random | None = None,
    ) -> Generation:
        """One completion conditioned on ``prompt``, drawn with ``rng``.

        With ``noise`` (server-side randomness, never the request's) the completion leaves
        the path ``rng`` alone would draw at a position after the first token, chosen by
        ``noise`` uniformly among the draws of that path: the text before it is
        byte-identical, there another plausible token is taken (see :meth:`_alternative`),
        and the rest follows from there. A path of a single draw cannot leave it.
        """
        table = self._choose_table(prompt, rng, params.temperature == 0.0)
        plain = (
            not params.stop
            and params.top_logprobs is None
            and params.presence_penalty == 0.0
            and params.frequency_penalty == 0.0
        )
        if noise is not None:
            probe = random.Random()
            probe.setstate(rng.getstate())
            if plain:
                ids, ended = self._run_plain(table, params, probe)
                draws = len(ids) + ended
            else:
                draws = self._run_general(table, params, probe)[1]
            if draws >= 2:
                diverge = (noise.randrange(1, draws), noise)
                return self._run_general(table, params, rng, diverge)[0]
        if plain:
            ids, ended = self._run_plain(table, params, rng)
            tokens = tuple(self._vocab[token] for token in ids)
            return Generation(
                text="".join(tokens),
                tokens=tokens,
                completion_tokens=len(tokens),
                finish_reason="stop" if ended else "length",
            )
        return self._run_general(table, params, rng)[0]

    def _run_plain(
        self, table: _Table, params: SamplingParams, rng: random.Random
    ) -> tuple[list[int], bool]:
        temperature, top_p = params.temperature, params.top_p
        memo = table.shapes(temperature, top_p)
        get, draw, reset, v = memo.get, rng.random, self._reset, self._v
        out: list[int] = []
        append = out.append
        key, last = self._start_key, _PARA
        for _ in range(params.max_tokens):
            entry = get(key)
            if entry is None:
                entry = table.shaped(key, temperature, top_p, memo)
            tokens, cumulative, total = entry
            token = tokens[bisect_right(cumulative, draw() * total)]
            if token == _EOS:
                return out, True
            append(token)
            restart = reset[token]
            key = restart if restart else last * v + token
            last = token
        return out, False

    def _run_general(
        self,
        table: _Table,
        params: SamplingParams,
        rng: random.Random,
        diverge: tuple[int, random.Random] | None = None,
    ) -> tuple[Generation, int]:
        """The completion and how many tokens were drawn (an end of text counts as one).

        ``diverge`` is (draw index, noise generator): that draw takes another token.
        """
        diverge_at, noise = diverge if diverge is not None else (-1, None)
        temperature, top_p = params.temperature, params.top_p
        penalised = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        memo = table.shapes(temperature, top_p)
        seen: dict[int, int] = {}
        ids: list[int] = []
        logprobs: list[TokenLogprob] = []
        text, cut, ended = "", -1, False
        longest_stop = max((len(stop) for stop in params.stop), default=0)
        key, last = self._start_key, _PARA
        draws = params.max_tokens
        for step in range(params.max_tokens):
            tokens, probs = table.dist(key)
            weights: list[float] | None = None
            if penalised:
                tokens, weights = penalise(tokens, probs, seen, params, temperature or 1.0)
                if temperature == 0.0:
                    token = tokens[0]
                else:
                    shaped = nucleus(tokens, weights, top_p)
                    token = shaped[0][bisect_right(shaped[1], rng.random() * shaped[2])]
            else:
                entry = memo.get(key) or table.shaped(key, temperature, top_p, memo)
                token = entry[0][bisect_right(entry[1], rng.random() * entry[2])]
            if step == diverge_at and noise is not None:
                if weights is None:
                    weights = temper(probs, temperature or 1.0)
                token = alternative(token, tokens, weights, temperature, top_p, noise)
            if token == _EOS:
                ended, draws = True, step + 1
                break
            ids.append(token)
            seen[token] = seen.get(token, 0) + 1
            if params.top_logprobs is not None:
                if weights is None:
                    weights = temper(probs, temperature or 1.0)
                logprobs.append(self._logprob(token, tokens, weights, params.top_logprobs))
            start = max(0, len(text) - longest_stop + 1)
            text += self._vocab[token]
            cut = find_stop(text, params.stop, start)
            if cut >= 0:
                ended, draws = True, step + 1
                break
            restart = self._reset[token]
            key = restart if restart else last * self._v + token
            last = token
        pieces = tuple(self._vocab[token] for token in ids)
        if cut >= 0:
            text = text[:cut]
            kept, offset = 0, 0
            while kept < len(pieces) and offset < cut:
                offset += len(pieces[kept])
                kept += 1
            pieces, logprobs = pieces[:kept], logprobs[:kept]
        generation = Generation(
            text=text,
            tokens=pieces,
            completion_tokens=len(ids),
            finish_reason="stop" if ended else "length",
            logprobs=tuple(logprobs) if params.top_logprobs is not None else None,
        )
        return generation, draws

    def _logprob(
        self, token: int, tokens: tuple[int, ...], weights: list[float], k: int
    ) -> TokenLogprob:
        """Log-probabilities of the (tempered, penalised) distribution; ``weights`` falls."""
        log_total = math.log(math.fsum(weights))

        def log_share(weight: float) -> float:
            return math.log(weight) - log_total if weight > 0.0 else -9999.0

        chosen = log_share(weights[tokens.index(token)])
        top = tuple(
            (self._vocab[tokens[i]], log_share(weights[i])) for i in range(min(k, len(tokens)))
        )
        return TokenLogprob(self._vocab[token], chosen, top)


_MODELS: dict[str | None, LanguageModel] = {}
_MODELS_LOCK = threading.Lock()


def load_model(variant: str | None = None) -> LanguageModel:
    """The model for ``variant``, trained on first use and then shared by the process."""
    with _MODELS_LOCK:
        model = _MODELS.get(variant)
        if model is None:
            model = LanguageModel(corpus_text(), Hyperparameters.for_variant(variant))
            _MODELS[variant] = model
        return model
