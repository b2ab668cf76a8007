"""Calibration of the drift test on an exact null: is P(p <= alpha) = alpha?

Pairs of rounds (20 jobs x K = 10) whose texts are drawn i.i.d. from one fixed
distribution of word strings, so nothing but sampling differs; the default
``equality_test`` (1,000 permutations) on each pair. Prints the rejection rate at
0.05 and 0.01 and the largest gap between the p-values' empirical distribution and
the uniform one.

Run: ``python bench/drift_calibration.py [pairs]`` (default 2,000).
"""

from __future__ import annotations

import random
import sys
import time

from runner.analysis.equality import EqualityTest, equality_test

WORDS = [
    "the",
    "a",
    "rover",
    "mars",
    "dust",
    "crew",
    "orbit",
    "launch",
    "signal",
    "storm",
    "quiet",
    "red",
    "plain",
]


def text(rng: random.Random) -> str:
    count = rng.randint(20, 40)
    common = WORDS[:6]
    return " ".join(rng.choice(common if rng.random() < 0.7 else WORDS) for _ in range(count))


def round_(rng: random.Random) -> dict[str, list[str]]:
    return {f"j{i:02d}": [text(rng) for _ in range(10)] for i in range(20)}


def main() -> None:
    import numpy as np

    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rng = random.Random(2026)
    started = time.perf_counter()
    p_values = []
    for index in range(pairs):
        result = equality_test(round_(rng), round_(rng), seed=index)
        assert isinstance(result, EqualityTest)
        p_values.append(result.p_value)
    values = np.sort(np.array(p_values))
    gap = np.max(np.abs(values - np.arange(1, pairs + 1) / pairs))
    print(
        f"{pairs} null pairs: rejects {np.mean(values <= 0.05):.2%} at 0.05, "
        f"{np.mean(values <= 0.01):.2%} at 0.01; largest ECDF gap {gap:.3f}; "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
