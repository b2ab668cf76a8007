"""The drift test's numbers (runner.analysis.equality and .kernels): no I/O, fixed seeds."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from runner.analysis.equality import (
    EqualityTest,
    NotEnoughSamples,
    SkippedJob,
    equality_test,
)
from runner.analysis.kernels import hamming_gram, spectrum_gram

COMMON = ["the", "crew", "rover", "orbit", "dust", "storm", "signal", "launch", "water", "ice"]
OTHER = ["bread", "oven", "flour", "salt", "crust", "butter", "yeast", "dough", "honey", "milk"]


def sample(rng: random.Random, words: list[str], count: int) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(count)]


def draw(seed: int, jobs: int, k: int, changed: frozenset[str] = frozenset()):
    """Two rounds from one distribution, except the ``changed`` jobs of round B."""
    rng = random.Random(seed)
    a = {f"j{i:02d}": sample(rng, COMMON, k) for i in range(jobs)}
    b = {key: sample(rng, OTHER if key in changed else COMMON, k) for key in sorted(a)}
    return a, b


def as_test(result: EqualityTest | NotEnoughSamples) -> EqualityTest:
    assert isinstance(result, EqualityTest), result
    return result


def test_the_same_distribution_does_not_reject_across_seeds() -> None:
    for seed in range(10):  # ten pairs of rounds, each its own permutation seed
        result = as_test(
            equality_test(*draw(seed=seed, jobs=20, k=10), seed=seed, permutations=500)
        )
        assert not result.rejects(0.05), seed
        assert (result.prompts, result.samples_a, result.samples_b) == (20, 200, 200)


def test_a_shifted_distribution_rejects_with_the_smallest_p_value() -> None:
    changed = frozenset(f"j{i:02d}" for i in range(20))
    a, b = draw(seed=2, jobs=20, k=10, changed=changed)
    result = as_test(equality_test(a, b, kernels=("hamming", "words"), permutations=500))
    assert result.p_value == 1 / 501
    assert result.rejects(0.05)
    assert result.statistic > 3
    hamming, words = result.kernels
    assert (hamming.kernel, words.kernel) == ("hamming", "words")
    assert words.mmd2 > 0.3 and hamming.mmd2 > 0  # other words, same lengths
    assert result.kernel == "words"


def test_the_p_value_is_reproducible_with_the_same_seed_and_input_order() -> None:
    a, b = draw(seed=3, jobs=8, k=6, changed=frozenset({"j01"}))
    first = equality_test(a, b, seed=42, permutations=300)
    shuffled_a = dict(reversed(list(a.items())))
    shuffled_b = dict(sorted(b.items(), key=lambda item: item[0][::-1]))
    assert equality_test(shuffled_a, shuffled_b, seed=42, permutations=300) == first
    other = as_test(equality_test(a, b, seed=43, permutations=300))
    assert other.statistic == pytest.approx(as_test(first).statistic, abs=0.5)
    assert other.seed == 43


def test_k_equals_1_is_not_enough_samples_for_a_test() -> None:
    a, b = draw(seed=4, jobs=5, k=1)
    result = equality_test(a, b)
    assert isinstance(result, NotEnoughSamples)
    assert result.reason.startswith("not enough samples for a test")
    assert (result.samples_a, result.samples_b, result.prompts) == (5, 5, 5)
    assert {job.reason for job in result.skipped} == {"too_few_samples"}


def test_empty_rounds_and_rounds_without_a_common_job_are_not_enough() -> None:
    assert isinstance(equality_test({}, {}), NotEnoughSamples)
    only_a = equality_test({"x": ["a", "b"]}, {"y": ["a", "b"]})
    assert isinstance(only_a, NotEnoughSamples)
    assert "no job in common" in only_a.reason
    assert [job.reason for job in only_a.skipped] == ["missing_in_b", "missing_in_a"]


def test_the_changed_job_ranks_first_and_has_its_own_small_p_value() -> None:
    a, b = draw(seed=5, jobs=12, k=10, changed=frozenset({"j07"}))
    result = as_test(equality_test(a, b, permutations=500))
    assert result.rejects(0.05)
    assert result.moved_most(1)[0].key == "j07"
    assert result.jobs[0].p_value < 0.01
    assert result.jobs[0].p_value == min(job.p_value for job in result.jobs)
    assert result.jobs[0].mmd2[0] > 0.3  # the mixture kernel's MMD² of the changed job
    assert sum(job.contribution for job in result.jobs) == pytest.approx(result.statistic)


def test_missing_jobs_are_skipped_and_the_rest_is_tested() -> None:
    a, b = draw(seed=6, jobs=6, k=5)
    a["only_a"] = ["x y", "x z"]
    b["only_b"] = ["x y", "x z", "x w"]
    a["short"], b["short"] = ["x"], ["x", "y"]
    result = as_test(equality_test(a, b, permutations=200))
    assert result.skipped == (
        SkippedJob("only_a", 2, 0, "missing_in_b"),
        SkippedJob("only_b", 0, 3, "missing_in_a"),
        SkippedJob("short", 1, 2, "too_few_samples"),
    )
    assert (result.prompts, result.samples_a, result.samples_b) == (6, 30, 30)
    assert {job.key for job in result.jobs} == {f"j{i:02d}" for i in range(6)}


def test_unequal_sample_counts_per_job_are_tested() -> None:
    rng = random.Random(7)
    a = {"p": sample(rng, COMMON, 3), "q": sample(rng, COMMON, 6)}
    b = {"p": sample(rng, COMMON, 5), "q": sample(rng, OTHER, 2)}
    result = as_test(equality_test(a, b, permutations=300))
    assert (result.samples_a, result.samples_b) == (9, 7)
    assert result.jobs[0].key == "q"


def test_byte_identical_rounds_score_zero_with_p_value_one() -> None:
    a = {"p": ["same text"] * 4, "q": ["other", "other", "other"]}
    b = {"p": ["same text"] * 3, "q": ["other"] * 5}
    result = as_test(equality_test(a, b))
    assert (result.statistic, result.p_value) == (0.0, 1.0)
    assert all(job.identical and job.contribution == 0.0 for job in result.jobs)
    empty = as_test(equality_test({"p": ["", ""]}, {"p": ["", ""]}))
    assert (empty.statistic, empty.p_value) == (0.0, 1.0)


def _mmd2_indices(gram: np.ndarray, side_a: list[int], side_b: list[int]) -> float:
    """The unbiased MMD² written out pair by pair."""
    n, m = len(side_a), len(side_b)
    aa = sum(gram[i, j] for i in side_a for j in side_a if i != j) / (n * (n - 1))
    bb = sum(gram[i, j] for i in side_b for j in side_b if i != j) / (m * (m - 1))
    ab = sum(gram[i, j] for i in side_a for j in side_b) / (n * m)
    return float(aa + bb - 2 * ab)


def test_one_kernel_gives_the_mean_of_the_unbiased_per_job_mmd2() -> None:
    a, b = draw(seed=8, jobs=4, k=4, changed=frozenset({"j00"}))
    a["j01"] = a["j01"][:2]
    result = as_test(equality_test(a, b, kernels=("hamming",), permutations=100))
    per_job = {}
    for key in a:
        gram = hamming_gram(a[key] + b[key], 1000)
        split = len(a[key])
        per_job[key] = _mmd2_indices(gram, list(range(split)), list(range(split, len(gram))))
    assert {job.key: job.mmd2[0] for job in result.jobs} == pytest.approx(per_job)
    assert result.kernels[0].mmd2 == pytest.approx(sum(per_job.values()) / 4)


def test_the_p_value_matches_exact_enumeration_of_the_relabellings() -> None:
    a = {"j": ["aaa", "aab", "abc"], "k": ["xyz", "xy", "x"]}
    b = {"j": ["bbb", "bba", "aaa"], "k": ["xyz", "xya", "q"]}
    grams = {key: hamming_gram(a[key] + b[key], None) for key in a}

    def mmd2(key: str, side_a: tuple[int, ...]) -> float:
        side_b = [i for i in range(6) if i not in side_a]
        return _mmd2_indices(grams[key], list(side_a), side_b)

    splits = list(combinations(range(6), 3))
    observed = (mmd2("j", (0, 1, 2)) + mmd2("k", (0, 1, 2))) / 2
    null = [(mmd2("j", x) + mmd2("k", y)) / 2 for x in splits for y in splits]
    exact = sum(value >= observed - 1e-12 for value in null) / len(null)
    result = as_test(equality_test(a, b, kernels=("hamming",), permutations=20_000, seed=1))
    assert result.p_value == pytest.approx(exact, abs=0.015)


def test_hamming_kernel_counts_aligned_code_points_with_padding() -> None:
    gram = hamming_gram(["abcd", "abxd", "ab", "日本"], None)
    assert gram[0, 1] == 0.75  # a, b, d agree
    assert gram[0, 2] == 0.5  # a, b agree; c, d against padding
    assert gram[2, 3] == 0.5  # both padded past 2 characters
    assert np.allclose(np.diag(gram), 1.0)
    assert hamming_gram(["abcd", "abxy"], 2)[0, 1] == 1.0  # cut to 2 characters


def counts(text: str, k: int, words: bool) -> Counter[tuple[str, ...]]:
    tokens = text.split() if words else list(text)
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, k + 1) for i in range(len(tokens) - n + 1)
    )


@pytest.mark.parametrize(("unit", "k"), [("chars", 5), ("words", 3), ("words", 1)])
def test_spectrum_kernel_is_the_normalised_count_of_common_runs(unit: str, k: int) -> None:
    rng = random.Random(9)
    vocabulary = ["a", "bb", "rover", "日本", "é", "x\u3000y", ""]
    texts = [
        rng.choice([" ", "\n\n", "  "]).join(
            rng.choice(vocabulary) for _ in range(rng.randint(0, 9))
        )
        for _ in range(12)
    ] + ["", ""]
    gram = spectrum_gram(texts, None, k=k, unit=unit)  # type: ignore[arg-type]
    profiles = [counts(text, k, unit == "words") for text in texts]
    for i, j in combinations(range(len(texts)), 2):
        dot = sum(value * profiles[j][run] for run, value in profiles[i].items())
        norms = sum(v * v for v in profiles[i].values()) * sum(v * v for v in profiles[j].values())
        expected = dot / norms**0.5 if norms else float(not profiles[i] and not profiles[j])
        assert gram[i, j] == pytest.approx(expected), (texts[i], texts[j])
    assert np.allclose(np.diag(gram), 1.0)


def test_importing_the_module_does_not_import_numpy() -> None:
    code = (
        "import sys, runner.analysis.equality, runner.cli; "
        "assert 'numpy' not in sys.modules, 'numpy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_mixture_kernel_is_words_plus_a_fifth_of_hamming() -> None:
    from runner.analysis.kernels import MIXTURE_HAMMING, mixture_gram

    texts = ["the red rover crossed the dust plain", "a storm hid the orbit", "the red rover", ""]
    expected = (
        spectrum_gram(texts, None, k=3, unit="words") + MIXTURE_HAMMING * hamming_gram(texts, None)
    ) / (1 + MIXTURE_HAMMING)
    assert np.array_equal(mixture_gram(texts, None), expected)
    assert np.allclose(np.diag(expected), 1.0)
    rng = random.Random(3)
    same = {f"j{i}": [rng.choice(texts[:3]) for _ in range(8)] for i in range(6)}
    other = {key: [rng.choice(texts[:3]) for _ in range(8)] for key in same}
    moved = {key: [texts[1]] * 8 for key in same}
    kept = equality_test(same, other, permutations=200, kernels=("mixture",))
    changed = equality_test(same, moved, permutations=200, kernels=("mixture",))
    assert isinstance(kept, EqualityTest) and isinstance(changed, EqualityTest)
    assert changed.rejects(0.05) and changed.kernel == "mixture"
    assert kept.p_value > changed.p_value
