"""The local language model: a topic-conditioned word trigram model with backoff.

This module owns training and the sampler; the hyperparameters, counts and next-token
distributions live in ``tables.py``. It trains at first use (about 40 ms) from the corpus
shipped beside it (see ``corpus.py``), once per process and variant, and memoises every
distribution it derives. Everything here is a pure function of the corpus bytes, the
hyperparameters and the random generator handed in, so a caller that derives that
generator from the request gets the same text in every process.

How a completion is made
    1. The model reads a prompt (a chat's last user message) and a context (the messages
       before it: system prompt, earlier turns). The keywords of both score each topic
       section (tf-idf over sections; the context's count ``CONTEXT_TOPIC_WEIGHT``); the
       choice's generator draws a topic in proportion to the squared score (greedy picks
       the best). A conversation that matches nothing uses the topic-free mixture.
    2. Tokens are drawn one by one from P(w | two previous tokens): interpolated counts of
       the chosen topic (weighted ``topic_weight``) and of the whole corpus, backing off to
       bigram and unigram distributions (Dirichlet smoothing with ``*_prior``), cut to the
       ``candidates`` most likely words; candidates the context holds weigh
       ``tables.PRIMING`` times more. After a sentence end the context restarts, so any
       sentence opening of the topic may follow. The smoothing keeps the distributions
       spread as a real model's are (a sampled token's surprisal is about 1.1 nats at
       temperature 0.7, 1.9 at 1.0), so temperature changes the text as much as it
       changes a real model's.
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
from dataclasses import asdict, dataclass
from typing import Literal

from runner.localmodel.corpus import TopicIndex, corpus_text, parse_sections
from runner.localmodel.sampling import (
    SamplingParams,
    alternative,
    find_stop,
    nucleus,
    penalise,
    temper,
)
from runner.localmodel.tables import Counts, Hyperparameters, Primed, Table
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

SAMPLER_VERSION = "trigram-sampler/2"
"""Bump whenever sampling arithmetic changes: it enters the fingerprint and every seed."""

MAX_TOP_LOGPROBS = 20

_EOS, _START, _PARA = 0, 1, 2  # end of text, sentence-start marker, paragraph-start marker
_SPECIALS = ("", "<s>", "<p>")
_PRIMED_LIMIT = 64  # primed tables (topic x context words) kept before the memo is dropped
CONTEXT_TOPIC_WEIGHT = 0.5
"""How much the context's keywords count toward the topic, next to the prompt's (1)."""


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
        corpus_counts = Counts()
        topic_counts: list[Counts] = []
        for name, token_ids in documents:
            counts = Counts()
            self._count(name, token_ids, hp, (corpus_counts, counts))
            topic_counts.append(counts)
        free_words = frozenset(
            token_id
            for token_id, token in enumerate(self._vocab)
            if token_id >= len(_SPECIALS) and token != "\n\n" and not token[:1].isalnum()
        )
        self._general = Table(corpus_counts, None, hp, self._v, free_words)
        self._tables = [
            Table(corpus_counts, counts, hp, self._v, free_words) for counts in topic_counts
        ]
        self._topics = TopicIndex(sections)
        self._primed_tables: dict[tuple[int, frozenset[int]], Primed] = {}
        self._primed_lock = threading.Lock()

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
        sinks: tuple[Counts, Counts],
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

    def _choose_table(
        self, prompt: str, context: str, rng: random.Random, greedy: bool
    ) -> Table | Primed:
        scores = self.topic_scores(prompt)
        if context:
            scores = [
                score + CONTEXT_TOPIC_WEIGHT * extra
                for score, extra in zip(scores, self.topic_scores(context), strict=True)
            ]
        weights = [score * score for score in scores]
        if not any(weights):
            return self._primed(-1, context)
        if greedy:
            return self._primed(weights.index(max(weights)), context)
        cumulative: list[float] = []
        running = 0.0
        for weight in weights:
            running += weight
            cumulative.append(running)
        index = bisect_right(cumulative, rng.random() * running)
        return self._primed(min(index, len(weights) - 1), context)

    def _primed(self, index: int, context: str) -> Table | Primed:
        """Topic ``index``'s table (-1: topic-free), primed by the context's words if any."""
        table = self._general if index < 0 else self._tables[index]
        words = frozenset(
            token_id
            for token in tokenize(context)
            if token.strip()[:1].isalnum()
            for form in (token.strip(), " " + token.strip())
            if (token_id := self._ids.get(form)) is not None
        )
        if not words:
            return table
        with self._primed_lock:
            primed = self._primed_tables.get((index, words))
            if primed is None:
                if len(self._primed_tables) >= _PRIMED_LIMIT:
                    self._primed_tables.clear()
                primed = self._primed_tables[(index, words)] = Primed(table, words)
        return primed

    def generate(
        self,
        prompt: str,
        params: SamplingParams,
        rng: random.Random,
        noise: random.Random | None = None,
        context: str = "",
    ) -> Generation:
        """One completion conditioned on ``prompt`` and ``context``, drawn with ``rng``.

        ``prompt`` is the request (a chat's last user message), ``context`` what came
        before it (the system prompt and earlier turns; "" for none): both score the
        topics (the context at ``CONTEXT_TOPIC_WEIGHT``) and the context's words are primed
        (see ``tables.Primed``). With an empty context the completion is exactly the one
        ``prompt`` alone gives.

        With ``noise`` (server-side randomness, never the request's) the completion leaves
        the path ``rng`` alone would draw at a position after the first token, chosen by
        ``noise`` uniformly among the draws of that path: the text before it is
        byte-identical, there another plausible token is taken (see :meth:`_alternative`),
        and the rest follows from there. A path of a single draw cannot leave it.
        """
        table = self._choose_table(prompt, context, rng, params.temperature == 0.0)
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
        self, table: Table | Primed, params: SamplingParams, rng: random.Random
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
        table: Table | Primed,
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
