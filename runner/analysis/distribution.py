"""The distribution test of a comparison: its verdict, and what is stored and shown.

``runner.analysis.equality`` owns the numbers; this module turns two rounds' samples into
a verdict at a significance level ``alpha``:

* ``same``: outputs may differ, but the test does not reject at ``alpha``: the
  differences are what this endpoint's own noise (best-effort seeds, sampling) makes;
* ``changed``: it rejects: round B's outputs come from another distribution (another
  model behind the same name, a changed parameter or prompt);
* ``not_tested``: no job has two samples or more on both sides (``note`` says why):
  ask for samples (``samples: K`` in the job file, ``--samples K``).

Only jobs that succeeded on both sides are tested (failures are reported on their own).
The permutations are seeded (``SEED``): the same rounds always give the same p-value.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.errors import ConfigError

DEFAULT_ALPHA = 0.05
SEED = 0  # the permutations' seed: a stored test can be recomputed


class Verdict(enum.StrEnum):
    SAME = "same"  # the test does not reject at alpha
    CHANGED = "changed"  # it rejects: the output distribution moved
    NOT_TESTED = "not_tested"  # not enough samples on a side (see note)


@dataclass(frozen=True)
class JobTest:
    """One job's part in the test."""

    contribution: float  # its share of the statistic (the jobs' shares add up to it)
    p_value: float  # this job tested alone (no multiplicity correction)


@dataclass(frozen=True)
class DistributionTest:
    """The test of two rounds, as compare and drift reports store and show it."""

    verdict: Verdict
    alpha: float
    samples_a: int  # completions used from round A (tested jobs; all jobs if not tested)
    samples_b: int
    jobs: int  # jobs tested (not tested: jobs seen)
    statistic: float | None = None
    p_value: float | None = None
    permutations: int | None = None
    seed: int | None = None
    kernel: str | None = None  # the kernel whose standardised MMD² is the statistic
    note: str | None = None  # why there is no test
    by_job: Mapping[str, JobTest] = field(default_factory=dict)
    moved_most: tuple[str, ...] = ()  # tested jobs, the largest contribution first

    def columns(self) -> dict[str, Any]:
        """The ``comparisons`` columns of the test."""
        return {
            "distribution": self.verdict.value,
            "alpha": self.alpha,
            "test_statistic": self.statistic,
            "test_p_value": self.p_value,
            "test_samples_a": self.samples_a,
            "test_samples_b": self.samples_b,
            "test_jobs": self.jobs,
            "test_permutations": self.permutations,
            "test_seed": self.seed,
            "test_kernel": self.kernel,
            "test_note": self.note,
        }

    def item_columns(self, key: str) -> dict[str, Any]:
        """The ``comparison_items`` columns of one job."""
        job = self.by_job.get(key)
        return {
            "test_contribution": None if job is None else job.contribution,
            "test_p_value": None if job is None else job.p_value,
        }

    def describe(self) -> str:
        """One line for people."""
        if self.verdict is Verdict.NOT_TESTED:
            return f"not tested: {self.note}"
        word = "changed" if self.verdict is Verdict.CHANGED else "within noise"
        return (
            f"{word}: p = {self.p_value:.4g} at alpha {self.alpha:g} (MMD {self.kernel}, "
            f"statistic {self.statistic:.3g}; {self.jobs} jobs, {self.samples_a} + "
            f"{self.samples_b} samples, {self.permutations} permutations)"
        )


def check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1 (e.g. 0.05), got {alpha:g}")
    return alpha


def distribution_test(
    samples: Mapping[str, tuple[Sequence[str | None], Sequence[str | None]]],
    alpha: float = DEFAULT_ALPHA,
) -> DistributionTest:
    """Test jobs' samples (key -> (round A's outputs, round B's)) at ``alpha``."""
    from runner.analysis.equality import NotEnoughSamples, equality_test

    check_alpha(alpha)
    round_a = {key: [text or "" for text in a] for key, (a, _) in samples.items()}
    round_b = {key: [text or "" for text in b] for key, (_, b) in samples.items()}
    result = equality_test(round_a, round_b, seed=SEED)
    if isinstance(result, NotEnoughSamples):
        return DistributionTest(
            verdict=Verdict.NOT_TESTED,
            alpha=alpha,
            samples_a=result.samples_a,
            samples_b=result.samples_b,
            jobs=result.prompts,
            note=result.reason,  # "not enough samples for a test: why"
        )
    return DistributionTest(
        verdict=Verdict.CHANGED if result.p_value <= alpha else Verdict.SAME,
        alpha=alpha,
        samples_a=result.samples_a,
        samples_b=result.samples_b,
        jobs=result.prompts,
        statistic=result.statistic,
        p_value=result.p_value,
        permutations=result.permutations,
        seed=result.seed,
        kernel=result.kernel,
        by_job={job.key: JobTest(job.contribution, job.p_value) for job in result.jobs},
        moved_most=tuple(job.key for job in result.jobs),
    )
