"""Whether two rounds' outputs come from one distribution: a kernel two-sample test.

This module owns the numbers of the drift test: the statistic, its permutation p-value
and each job's part in it. It follows Gao, Liang & Guestrin, "Model Equality Testing:
Which model is this API serving?" (ICLR 2025, arXiv 2410.20247) and their reference code
(``model_equality_testing``: ``tests._mmd``, ``pvalue.two_sample_permutation_pvalue``).

Kernel. Over (prompt, completion) pairs, ``k((x, y), (x', y')) = 1[x = x'] * h(y, y')``:
only completions of the same job are ever compared. ``h`` is one of the string kernels
of ``runner.analysis.kernels``: ``hamming`` (the paper's default, on code points),
``words`` (the paper's k-spectrum kernel on words, runs of 1 to 3) or ``chars`` (the
same on code points, runs of 1 to 5, the reference code's k); ``mixture``, the default,
is ``words`` plus 0.2 x ``hamming``, one kernel. Completions are cut to
their first ``max_chars`` code points (default 1,000, the length the reference dataset
loader pads to).

Statistic. Per job and kernel, the unbiased MMD² (Gretton et al. 2012): the mean ``h``
over distinct pairs within round A, plus the same within round B, minus twice the mean
over A-B pairs. A kernel's round statistic is the mean over the tested jobs. With the
same number of samples per job on each side this is exactly the reference code's pooled
statistic. When counts differ between jobs, the pooled form's per-job parts no longer
centre on zero under the null; unbiased per-job estimates always do.

The default: one kernel, ``mixture``. Word runs see what a completion says wherever it
sits but hardly its length; the Hamming part, aligned by position, sees openings and
length. On the built-in model (20 prompts, K = 10, 50 trials) it detects a backend
variant 94 %, temperature 0.7 -> 1.0 92 %, one added system-prompt sentence and
max_tokens 64 -> 48 100 %; the maximum over separate ``hamming`` and ``words`` tests
(the default until ``VERSION`` v2) got 88 % and 86 % on the first two, paying for
not knowing which change came (BENCHMARKS.md, "Drift test").

Several kernels (``kernels=("hamming", "words")``). Each kernel's statistic is
standardised by the mean and standard deviation of its values over the relabellings,
and the largest standardised value is the test statistic, calibrated on the same
relabellings (the aggregation of MMDAgg, Schrab et al. 2023, with a max of z-scores).
Why two: on the built-in model (20 prompts, K = 10), the Hamming kernel alone caught a
max_tokens 64 -> 48 change every time but a backend variant in about 5 of 10 trials; the
word kernel alone caught the variant in about 9 of 10 but the max_tokens change about 2
times in 10 (it hardly sees length). Together: all of the first, about 9 of 10 of the
second; the maximum pays a few points against the better kernel alone, which the
``mixture`` kernel does not. With one kernel the test is exactly that kernel's MMD test.

p-value. Labels are permuted within each job (a stratified permutation: a round asks
every job a fixed number of times, so under the null only samples of the same job are
exchangeable; the reference code permutes the pooled sample because its prompts are
drawn at random). ``permutations`` random relabellings come from
``numpy.random.default_rng(seed)``, so a report can be recomputed, and
``p = (1 + #{T_b >= T}) / (1 + permutations)`` (Phipson & Smyth 2010): valid at any number
of permutations and never 0 (the reference code's ``mean(T_b >= T)`` can be). The same
relabellings give each job its own p-value, and each kernel its own.

Which jobs moved. A job's contribution is its share of the statistic: its MMD² under
the deciding kernel, less its mean over the relabellings, divided by the number of jobs
and the statistic's standard deviation; contributions add up to the statistic.

Not enough samples. An unbiased MMD² needs two completions on each side: a job is tested
when it has at least ``MIN_SAMPLES`` (2) completions in round A and at least 2 in round B.
Other jobs are listed as skipped, with why. With no job tested (K = 1 rounds, empty
rounds, no job in common) the result is :class:`NotEnoughSamples`, not a p-value.

A job whose completions are all byte-identical on both sides scores exactly 0 under
every relabelling; when every job is like that the statistic is 0 and p = 1.

No I/O. numpy is imported inside the functions that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal

from runner.analysis.kernels import hamming_gram, mixture_gram, spectrum_gram

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "DEFAULT_KERNELS",
    "DEFAULT_MAX_CHARS",
    "DEFAULT_PERMUTATIONS",
    "DEFAULT_SEED",
    "MIN_SAMPLES",
    "EqualityTest",
    "JobResult",
    "Kernel",
    "KernelResult",
    "NotEnoughSamples",
    "SkippedJob",
    "equality_test",
]

Kernel = Literal["hamming", "chars", "words", "mixture"]
DEFAULT_KERNELS: tuple[Kernel, ...] = ("mixture",)
DEFAULT_PERMUTATIONS = 1000
DEFAULT_SEED = 0
DEFAULT_MAX_CHARS = 1000
MIN_SAMPLES = 2
VERSION = "v2"  # bump when a kernel, the tokenisation or the aggregation changes

_GRAMS: dict[Kernel, Callable[[Sequence[str], int | None], NDArray[np.float64]]] = {
    "hamming": hamming_gram,
    "chars": partial(spectrum_gram, k=5, unit="chars"),
    "words": partial(spectrum_gram, k=3, unit="words"),
    "mixture": mixture_gram,
}
_TOLERANCE = 1e-9  # ties within rounding count as "at least as large" (the safe side)
_FLAT = 1e-12  # a kernel whose statistic varies less over the relabellings is constant
_CHUNK_FLOATS = 4_000_000  # relabellings x samples held at once (32 MB of float64)

SkipReason = Literal["missing_in_a", "missing_in_b", "too_few_samples"]


@dataclass(frozen=True)
class SkippedJob:
    """A job left out of the test, and why."""

    key: str
    samples_a: int
    samples_b: int
    reason: SkipReason  # missing on one side, or fewer than MIN_SAMPLES on a side


@dataclass(frozen=True)
class KernelResult:
    """The round's MMD² under one kernel, and that kernel's test alone."""

    kernel: Kernel
    mmd2: float  # mean over tested jobs of their unbiased MMD² (about 0 when unchanged)
    z: float  # (mmd2 - mean over relabellings) / their standard deviation
    p_value: float  # this kernel alone, same relabellings


@dataclass(frozen=True)
class JobResult:
    """One tested job: its MMD² per kernel, its share of the statistic, its own p-value."""

    key: str
    samples_a: int
    samples_b: int
    mmd2: tuple[float, ...]  # unbiased MMD² of this job alone, one per kernel (can be < 0)
    contribution: float  # share of the statistic; the jobs' contributions sum to it
    p_value: float  # this job tested alone, same relabellings (no multiplicity correction)
    identical: bool  # every completion byte-identical on both sides


@dataclass(frozen=True)
class EqualityTest:
    """The test of one pair of rounds: statistic, p-value, and what it was computed on."""

    statistic: float  # the largest standardised MMD² over the kernels (0 when nothing moved)
    p_value: float
    kernel: Kernel  # the kernel whose standardised MMD² is the statistic
    kernels: tuple[KernelResult, ...]
    permutations: int
    seed: int
    samples_a: int  # completions used from round A (tested jobs only)
    samples_b: int
    prompts: int  # jobs tested
    jobs: tuple[JobResult, ...]  # the largest contribution first ("moved most")
    skipped: tuple[SkippedJob, ...]
    max_chars: int | None
    version: str = VERSION

    def rejects(self, alpha: float) -> bool:
        """Whether the test says the distributions differ at level ``alpha``."""
        return self.p_value <= alpha

    def moved_most(self, count: int) -> tuple[JobResult, ...]:
        """The ``count`` jobs with the largest contributions, largest first."""
        return self.jobs[:count]


@dataclass(frozen=True)
class NotEnoughSamples:
    """No job had two completions on both sides: there is nothing to test."""

    reason: str
    samples_a: int  # completions seen in round A, all jobs
    samples_b: int
    prompts: int  # jobs seen on either side
    skipped: tuple[SkippedJob, ...]


def equality_test(
    round_a: Mapping[str, Sequence[str]],
    round_b: Mapping[str, Sequence[str]],
    *,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = DEFAULT_SEED,
    kernels: Sequence[Kernel] = DEFAULT_KERNELS,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> EqualityTest | NotEnoughSamples:
    """Test whether round B's completions come from the same distribution as round A's.

    ``round_a`` and ``round_b`` map a job key to that job's completions in the round
    (K samples each, counts may differ; a job may be missing on one side). The result
    depends only on the inputs, ``seed`` and the options, not on the mappings' order.
    """
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    if max_chars is not None and max_chars < 1:
        raise ValueError("max_chars must be at least 1 (or None for no cap)")
    if not kernels or any(kernel not in _GRAMS for kernel in kernels):
        raise ValueError(f"kernels must be some of {', '.join(_GRAMS)}")
    for side in (round_a, round_b):
        for key, texts in side.items():
            if isinstance(texts, str):
                raise TypeError(f"job {key!r}: expected a sequence of completions, got a str")
    tested, skipped = _partition(round_a, round_b)
    if not tested:
        return NotEnoughSamples(
            reason=_not_enough_reason(round_a, round_b),
            samples_a=sum(len(texts) for texts in round_a.values()),
            samples_b=sum(len(texts) for texts in round_b.values()),
            prompts=len(set(round_a) | set(round_b)),
            skipped=skipped,
        )
    pairs = {key: (list(round_a[key]), list(round_b[key])) for key in tested}
    stats = _job_statistics(pairs, tuple(kernels), permutations, seed, max_chars)
    return _summarise(pairs, stats, tuple(kernels), skipped, permutations, seed, max_chars)


def _partition(
    round_a: Mapping[str, Sequence[str]], round_b: Mapping[str, Sequence[str]]
) -> tuple[list[str], tuple[SkippedJob, ...]]:
    tested: list[str] = []
    skipped: list[SkippedJob] = []
    for key in sorted(set(round_a) | set(round_b)):
        count_a = len(round_a.get(key, ()))
        count_b = len(round_b.get(key, ()))
        reason: SkipReason | None = None
        if count_a == 0:
            reason = "missing_in_a"
        elif count_b == 0:
            reason = "missing_in_b"
        elif count_a < MIN_SAMPLES or count_b < MIN_SAMPLES:
            reason = "too_few_samples"
        if reason is None:
            tested.append(key)
        else:
            skipped.append(SkippedJob(key, count_a, count_b, reason))
    return tested, tuple(skipped)


def _not_enough_reason(
    round_a: Mapping[str, Sequence[str]], round_b: Mapping[str, Sequence[str]]
) -> str:
    if not any(round_a.values()) or not any(round_b.values()):
        return "not enough samples for a test: a round has no completions"
    if not {key for key, texts in round_a.items() if texts} & {
        key for key, texts in round_b.items() if texts
    }:
        return "not enough samples for a test: the rounds have no job in common"
    return (
        f"not enough samples for a test: no job has at least {MIN_SAMPLES} completions "
        f"in both rounds (ask for {MIN_SAMPLES} or more samples per job)"
    )


def _job_statistics(
    pairs: dict[str, tuple[list[str], list[str]]],
    kernels: tuple[Kernel, ...],
    permutations: int,
    seed: int,
    max_chars: int | None,
) -> dict[str, NDArray[np.float64]]:
    """Per job, its unbiased MMD² ``(kernels, 1 + permutations)``: observed, then relabelled.

    Jobs are grouped by their sample counts and batched; each chunk of jobs draws its
    relabellings from one seeded generator, in sorted order, shared by every kernel.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    stats: dict[str, NDArray[np.float64]] = {}
    groups: dict[tuple[int, int], list[str]] = {}
    for key, (texts_a, texts_b) in pairs.items():
        if len(set(texts_a) | set(texts_b)) == 1:  # exactly 0 under every relabelling
            stats[key] = np.zeros((len(kernels), permutations + 1))
        else:
            groups.setdefault((len(texts_a), len(texts_b)), []).append(key)
    for (count_a, count_b), keys in sorted(groups.items()):
        size = count_a + count_b
        chunk = max(1, _CHUNK_FLOATS // ((permutations + 1) * size))
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            labels = _labels(rng, len(part), permutations, count_a, size)
            per_kernel = [
                _mmd2(_grams(kernel, part, pairs, max_chars), labels, count_a, count_b)
                for kernel in kernels
            ]
            block = np.stack(per_kernel, axis=1)  # (jobs, kernels, 1 + permutations)
            for index, key in enumerate(part):
                stats[key] = block[index]
    return stats


def _grams(
    kernel: Kernel,
    keys: list[str],
    pairs: dict[str, tuple[list[str], list[str]]],
    max_chars: int | None,
) -> NDArray[np.float64]:
    """The kernel matrices of ``keys``, round A's completions first: ``(jobs, m, m)``."""
    import numpy as np

    gram = _GRAMS[kernel]
    return np.stack([gram([*pairs[key][0], *pairs[key][1]], max_chars) for key in keys])


def _summarise(
    pairs: dict[str, tuple[list[str], list[str]]],
    stats: dict[str, NDArray[np.float64]],
    kernels: tuple[Kernel, ...],
    skipped: tuple[SkippedJob, ...],
    permutations: int,
    seed: int,
    max_chars: int | None,
) -> EqualityTest:
    """Aggregate the jobs: mean MMD² per kernel, standardised, the largest decides.

    Standardising uses the mean and spread of all ``1 + permutations`` values, a symmetric
    function of the relabellings, so ranking the observed value among them stays a valid
    permutation p-value (the aggregation of Schrab et al.'s MMDAgg, with a max of z-scores).
    """
    import numpy as np

    keys = list(pairs)
    per_job = np.stack([stats[key] for key in keys]) / len(keys)  # shares of the mean
    round_stats = per_job.sum(axis=0)  # (kernels, 1 + permutations)
    spread, z = _standardise(round_stats)
    decided = int(np.argmax(z[:, 0]))
    jobs = []
    for index, key in enumerate(keys):
        texts_a, texts_b = pairs[key]
        share = per_job[index, decided]
        contribution = (share[0] - share.mean()) / spread[decided] if spread[decided] else 0.0
        jobs.append(
            JobResult(
                key=key,
                samples_a=len(texts_a),
                samples_b=len(texts_b),
                mmd2=tuple(float(value) for value in stats[key][:, 0]),
                contribution=float(contribution),
                p_value=_p_value(_standardise(stats[key])[1].max(axis=0)),
                identical=len(set(texts_a) | set(texts_b)) == 1,
            )
        )
    jobs.sort(key=lambda job: (-job.contribution, job.key))
    return EqualityTest(
        statistic=float(z[decided, 0]),
        p_value=_p_value(z.max(axis=0)),
        kernel=kernels[decided],
        kernels=tuple(
            KernelResult(kernel, float(round_stats[i, 0]), float(z[i, 0]), _p_value(round_stats[i]))
            for i, kernel in enumerate(kernels)
        ),
        permutations=permutations,
        seed=seed,
        samples_a=sum(job.samples_a for job in jobs),
        samples_b=sum(job.samples_b for job in jobs),
        prompts=len(jobs),
        jobs=tuple(jobs),
        skipped=skipped,
        max_chars=max_chars,
    )


def _standardise(
    values: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per row (kernel): the standard deviation and the z-scores (0 where the row is constant)."""
    import numpy as np

    centre = values.mean(axis=-1)
    spread = values.std(axis=-1)
    spread = np.where(spread > _FLAT, spread, 0.0)
    safe = np.where(spread > 0, spread, 1.0)
    z = np.where(spread[:, None] > 0, (values - centre[:, None]) / safe[:, None], 0.0)
    return spread, z


def _p_value(values: NDArray[np.float64]) -> float:
    """``(1 + #{relabelled >= observed}) / (1 + permutations)``; ``values[0]`` is observed."""
    above = int((values[1:] >= values[0] - _TOLERANCE).sum())
    return (1.0 + above) / float(values.size)


def _labels(
    rng: np.random.Generator, jobs: int, permutations: int, count_a: int, size: int
) -> NDArray[np.float64]:
    """Round-A indicators, ``(jobs, permutations + 1, size)``: row 0 observed, then random.

    Each random row puts ``count_a`` ones at uniformly drawn places (the first ``count_a``
    of a random ordering), independently per job: a stratified relabelling.
    """
    import numpy as np

    order = rng.random((jobs, permutations, size)).argsort(axis=-1)
    labels = np.zeros((jobs, permutations + 1, size), dtype=np.float64)
    labels[:, 0, :count_a] = 1.0
    np.put_along_axis(labels[:, 1:, :], order[:, :, :count_a], 1.0, axis=-1)
    return labels


def _mmd2(
    grams: NDArray[np.float64], labels: NDArray[np.float64], count_a: int, count_b: int
) -> NDArray[np.float64]:
    """Unbiased MMD² of every job under every labelling, ``(jobs, labellings)``.

    With ``G`` the kernel matrix without its diagonal and ``a`` a labelling's round-A
    indicator: within-A sum ``a'Ga``, A-B sum ``a'G1 - a'Ga``, within-B sum
    ``1'G1 - 2a'G1 + a'Ga``; one batched product per chunk of jobs.
    """
    import numpy as np

    size = grams.shape[-1]
    off = grams * (1.0 - np.eye(size))[None, :, :]
    rows = off.sum(axis=-1)  # (jobs, size)
    total = rows.sum(axis=-1)[:, None]  # (jobs, 1)
    within_a = np.einsum("jbs,jbs->jb", labels @ off, labels)
    row_part = np.einsum("jbs,js->jb", labels, rows)
    across = row_part - within_a
    within_b = total - 2.0 * row_part + within_a
    result: NDArray[np.float64] = (
        within_a / (count_a * (count_a - 1))
        + within_b / (count_b * (count_b - 1))
        - 2.0 * across / (count_a * count_b)
    )
    return result
