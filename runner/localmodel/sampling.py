"""The arithmetic of one draw: sampling settings, temperature, nucleus, penalties, stops.

Pure functions over one context's candidates (token ids sorted by falling probability and
their weights), shared by the model's plain and general paths; the determinism rules of
``model.py`` hold here too (no ``sum()`` of floats, no global random state).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import dataclass

__all__ = [
    "SamplingParams",
    "Shaped",
    "alternative",
    "find_stop",
    "nucleus",
    "penalise",
    "temper",
]

Shaped = tuple[tuple[int, ...], tuple[float, ...], float]  # candidates, cumulative, total


@dataclass(frozen=True)
class SamplingParams:
    """Per-choice sampling settings, already validated by the caller."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int | None = None  # None: no logprobs; k: logprobs with k alternatives


def temper(probs: tuple[float, ...], temperature: float) -> list[float]:
    if temperature == 1.0:
        return list(probs)
    exponent = 1.0 / temperature
    return [prob**exponent for prob in probs]


def nucleus(tokens: tuple[int, ...], weights: list[float], top_p: float) -> Shaped:
    """Keep the smallest prefix holding ``top_p`` of the mass (at least one token)."""
    threshold = top_p * math.fsum(weights)
    cumulative: list[float] = []
    running = 0.0
    for weight in weights:
        running += weight
        cumulative.append(running)
        if running >= threshold:
            break
    kept = len(cumulative)
    return tokens[:kept], tuple(cumulative), cumulative[-1]


def penalise(
    tokens: tuple[int, ...],
    probs: tuple[float, ...],
    seen: dict[int, int],
    params: SamplingParams,
    temperature: float,
) -> tuple[tuple[int, ...], list[float]]:
    """Tempered weights after OpenAI's presence/frequency penalties, re-sorted if they moved.

    A penalty is subtracted from the logit before temperature: weight = exp((log p - pen) / T).
    """
    hits = [index for index, token in enumerate(tokens) if token in seen]
    if not hits:
        return tokens, temper(probs, temperature)
    logits = [math.log(prob) / temperature for prob in probs]
    for index in hits:
        count = seen[tokens[index]]
        penalty = params.frequency_penalty * count + params.presence_penalty
        logits[index] -= penalty / temperature
    top = max(logits)  # scale to the largest, so exp() never overflows
    weights = [math.exp(logit - top) for logit in logits]
    order = sorted(range(len(tokens)), key=lambda index: (-weights[index], tokens[index]))
    return tuple(tokens[index] for index in order), [weights[index] for index in order]


def alternative(
    token: int,
    tokens: tuple[int, ...],
    weights: list[float],
    temperature: float,
    top_p: float,
    noise: random.Random,
) -> int:
    """Another plausible token than ``token``, as a server whose kernels moved a logit takes.

    At temperature 0 the runner-up; otherwise a draw from the nucleus without ``token``
    (the runner-up if ``token`` was all of it). ``tokens`` falls in ``weights``.
    """
    others = [index for index, other in enumerate(tokens) if other != token]
    if not others:
        return token  # a context with a single candidate: nothing else is plausible
    if temperature != 0.0:
        kept = len(nucleus(tokens, weights, top_p)[0])
        kept_others = [index for index in others if index < kept]
        if kept_others:
            cumulative: list[float] = []
            running = 0.0
            for index in kept_others:
                running += weights[index]
                cumulative.append(running)
            pick = bisect_right(cumulative, noise.random() * running)
            return tokens[kept_others[min(pick, len(kept_others) - 1)]]
    return tokens[others[0]]


def find_stop(text: str, stops: tuple[str, ...], start: int) -> int:
    found = [index for index in (text.find(stop, start) for stop in stops) if index >= 0]
    return min(found) if found else -1
