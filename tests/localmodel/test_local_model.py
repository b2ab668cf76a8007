"""The language model alone: determinism, sampling semantics, topic conditioning."""

from __future__ import annotations

import itertools
import math
import random
import re
from typing import Any

import pytest

from runner.localmodel.model import (
    Generation,
    Hyperparameters,
    LanguageModel,
    SamplingParams,
    corpus_text,
    load_model,
)
from runner.localmodel.tokenizer import keywords

MARS = "Generate a short excerpt of news about a journey to Mars."
COOKING = "How should I cook a soup with onions and bread?"


@pytest.fixture(scope="module")
def model() -> LanguageModel:
    return load_model()


def gen(model: LanguageModel, prompt: str, seed: int, **params: Any) -> Generation:
    return model.generate(prompt, SamplingParams(**params), random.Random(seed))


def test_training_is_a_pure_function_of_corpus_and_hyperparameters(model: LanguageModel) -> None:
    fresh = LanguageModel(corpus_text(), Hyperparameters())
    assert fresh.fingerprint_digest == model.fingerprint_digest
    for seed in range(5):
        assert (
            gen(fresh, MARS, seed, max_tokens=80).text == gen(model, MARS, seed, max_tokens=80).text
        )


def test_fingerprint_changes_with_corpus_hyperparameters_and_variant(model: LanguageModel) -> None:
    edited = LanguageModel(corpus_text() + "\nOne more sentence.\n", Hyperparameters())
    smoother = LanguageModel(corpus_text(), Hyperparameters(trigram_prior=0.5))
    digests = {
        model.fingerprint_digest,
        edited.fingerprint_digest,
        smoother.fingerprint_digest,
        load_model("v2").fingerprint_digest,
    }
    assert len(digests) == 4


def test_same_generator_same_text_other_generator_other_text(model: LanguageModel) -> None:
    first = gen(model, MARS, 1, temperature=0.8, max_tokens=64)
    assert gen(model, MARS, 1, temperature=0.8, max_tokens=64) == first
    assert gen(model, MARS, 2, temperature=0.8, max_tokens=64).text != first.text
    assert first.completion_tokens == 64 and first.finish_reason == "length"


@pytest.mark.parametrize("temperature", [0.0, 0.3, 0.7, 1.0, 1.6])
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_asking_for_logprobs_never_changes_the_tokens(
    model: LanguageModel, temperature: float, top_p: float
) -> None:
    for seed in range(6):
        plain = gen(model, MARS, seed, temperature=temperature, top_p=top_p, max_tokens=60)
        scored = gen(
            model, MARS, seed, temperature=temperature, top_p=top_p, max_tokens=60, top_logprobs=3
        )
        assert scored.text == plain.text
        assert scored.logprobs is not None and len(scored.logprobs) == scored.completion_tokens


def test_shorter_max_tokens_gives_a_prefix(model: LanguageModel) -> None:
    long = gen(model, COOKING, 3, max_tokens=100)
    short = gen(model, COOKING, 3, max_tokens=10)
    assert long.text.startswith(short.text)
    assert short.completion_tokens == 10 and short.finish_reason == "length"
    assert "".join(short.tokens) == short.text


def test_stop_cuts_before_the_first_occurrence(model: LanguageModel) -> None:
    free = gen(model, MARS, 5, max_tokens=200)
    stop = " the"
    assert stop in free.text
    stopped = gen(model, MARS, 5, max_tokens=200, stop=(stop, "zzz"))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stop not in stopped.text


def test_stop_spanning_several_tokens(model: LanguageModel) -> None:
    free = gen(model, MARS, 8, max_tokens=300, temperature=0.0)
    stop = " the crew"
    assert stop in free.text
    stopped = gen(model, MARS, 8, max_tokens=300, temperature=0.0, stop=(stop,))
    assert stopped.text == free.text[: free.text.index(stop)]


def test_text_can_end_naturally(model: LanguageModel) -> None:
    ended = [gen(model, MARS, seed, max_tokens=1024) for seed in range(40)]
    natural = [g for g in ended if g.finish_reason == "stop"]
    assert natural, "no natural end in 40 samples"
    assert all(g.text.endswith((".", "!", "?")) for g in natural)


def test_temperature_zero_is_greedy_and_ignores_the_generator(model: LanguageModel) -> None:
    texts = {gen(model, MARS, seed, temperature=0.0, max_tokens=50).text for seed in range(5)}
    assert len(texts) == 1


def test_top_p_zero_keeps_only_the_most_likely_token(model: LanguageModel) -> None:
    # "hello" matches no topic, so the topic draw cannot differ from greedy's choice.
    greedy = gen(model, "hello", 0, temperature=0.0, max_tokens=40).text
    assert gen(model, "hello", 9, temperature=1.0, top_p=0.0, max_tokens=40).text == greedy


def test_low_temperature_is_less_varied_than_high(model: LanguageModel) -> None:
    cold = {gen(model, MARS, seed, temperature=0.05, max_tokens=30).text for seed in range(12)}
    hot = {gen(model, MARS, seed, temperature=1.5, max_tokens=30).text for seed in range(12)}
    assert len(cold) < len(hot) == 12


def _repeats(text: str) -> float:
    words = text.split()
    return 1 - len(set(words)) / len(words)


@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_positive_penalties_reduce_repetition_negative_increase_it(
    model: LanguageModel, penalty: str
) -> None:
    base = _repeats(gen(model, MARS, 0, temperature=0.0, max_tokens=150).text)
    less = _repeats(gen(model, MARS, 0, temperature=0.0, max_tokens=150, **{penalty: 1.5}).text)
    sampled = _repeats(gen(model, MARS, 0, temperature=1.0, max_tokens=150).text)
    more = _repeats(gen(model, MARS, 0, temperature=1.0, max_tokens=150, **{penalty: -2.0}).text)
    assert less < base
    assert more > sampled


def test_logprobs_are_the_sampling_distribution(model: LanguageModel) -> None:
    result = gen(model, MARS, 4, temperature=0.7, max_tokens=40, top_logprobs=20)
    assert result.logprobs is not None
    for entry in result.logprobs:
        alternatives = dict(entry.top)
        assert entry.logprob <= 0.0
        assert list(alternatives.values()) == sorted(alternatives.values(), reverse=True)
        assert math.fsum(math.exp(lp) for lp in alternatives.values()) <= 1.0 + 1e-9
        if entry.token in alternatives:
            assert alternatives[entry.token] == entry.logprob


def test_reported_probabilities_match_observed_frequencies(model: LanguageModel) -> None:
    # "hello" matches no topic: every draw starts from the same context.
    draws = 3000
    counts: dict[str, int] = {}
    for seed in range(draws):
        token = gen(model, "hello", seed, temperature=0.7, max_tokens=1).text
        counts[token] = counts.get(token, 0) + 1
    reported = gen(model, "hello", 0, temperature=0.7, max_tokens=1, top_logprobs=5)
    assert reported.logprobs is not None
    for token, logprob in reported.logprobs[0].top:
        expected = math.exp(logprob)
        observed = counts.get(token, 0) / draws
        # four standard deviations of a binomial share
        assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / draws) + 1e-3


def test_temperature_sharpens_the_reported_distribution(model: LanguageModel) -> None:
    def first(temperature: float) -> float:
        result = gen(model, MARS, 0, temperature=temperature, max_tokens=1, top_logprobs=5)
        assert result.logprobs is not None
        return result.logprobs[0].top[0][1]

    assert first(0.5) > first(1.0) > first(1.5)


def test_prompt_words_pull_the_text_toward_their_topic(model: LanguageModel) -> None:
    topics = model.topics
    for prompt, topic in [
        (MARS, "mars"),
        (COOKING, "cooking"),
        ("Will it rain or snow?", "weather"),
    ]:
        hits = 0
        for seed in range(10):
            text = gen(model, prompt, seed, temperature=0.7, max_tokens=120).text
            scores = model.topic_scores(text)
            hits += topics[scores.index(max(scores))] == topic
        assert hits >= 7, (prompt, hits)


def test_output_reads_like_the_corpus_not_noise(model: LanguageModel) -> None:
    corpus_pairs = set()
    for paragraph in corpus_text().split("\n\n"):
        words = keywords(paragraph)
        corpus_pairs.update(itertools.pairwise(words))
    texts = [gen(model, MARS, seed, temperature=0.8, max_tokens=120).text for seed in range(10)]
    assert len(set(texts)) == 10
    for text in texts:
        words = keywords(text)
        pairs = list(itertools.pairwise(words))
        known = sum(pair in corpus_pairs for pair in pairs) / len(pairs)
        assert known > 0.85, text
        # sentences open with a capital letter
        for opening in re.findall(r"[.!?]\s+(\S)", text):
            assert opening.isupper(), text


def test_variant_changes_the_text_even_at_temperature_zero(model: LanguageModel) -> None:
    other = load_model("backend-update-2")
    assert other.fingerprint_digest != model.fingerprint_digest
    greedy = [gen(m, MARS, 0, temperature=0.0, max_tokens=120).text for m in (model, other)]
    assert greedy[0] != greedy[1]


def test_context_words_are_primed_and_move_the_text_a_little(model: LanguageModel) -> None:
    """A system prompt's words become likelier; the vocabulary stays the prompt's."""
    context = "You are a writer. Keep the tone calm and factual."
    params = SamplingParams(temperature=1.0, max_tokens=64)
    counts = {"alone": 0, "primed": 0}
    vocab: dict[str, set[str]] = {"alone": set(), "primed": set(), "again": set()}
    for seed in range(40):
        for name, text in (
            ("alone", model.generate(MARS, params, random.Random(seed)).text),
            ("primed", model.generate(MARS, params, random.Random(seed), context=context).text),
            ("again", model.generate(MARS, params, random.Random(100 + seed)).text),
        ):
            words = keywords(text)
            counts[name] = counts.get(name, 0) + words.count("the") + words.count("and")
            vocab[name].update(words)

    def overlap(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b)

    assert counts["primed"] > 1.2 * counts["alone"]
    # the primed texts share about as many words with the plain ones as fresh samples do
    noise = overlap(vocab["alone"], vocab["again"])
    assert overlap(vocab["alone"], vocab["primed"]) > 0.8 * noise


def test_context_keywords_pull_the_topic(model: LanguageModel) -> None:
    """A prompt without topic words follows the topic of the conversation before it."""
    context = "We were talking about baking bread in a hot oven with flour and yeast."
    hits = 0
    for seed in range(10):
        params = SamplingParams(temperature=0.7, max_tokens=120)
        text = model.generate("Tell me more.", params, random.Random(seed), context=context).text
        scores = model.topic_scores(text)
        hits += model.topics[scores.index(max(scores))] == "cooking"
    assert hits >= 7


def test_empty_context_is_the_prompt_alone(model: LanguageModel) -> None:
    for seed in range(5):
        params = SamplingParams(temperature=0.7, max_tokens=60)
        assert (
            model.generate(MARS, params, random.Random(seed), context="").text
            == model.generate(MARS, params, random.Random(seed)).text
        )
