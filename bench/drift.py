"""Benchmark of the drift test (``runner.analysis.equality``): cost, false alarms, power.

Cost. The test on synthetic text (64 words a completion, about 350 characters) for
20 prompts x K = 10 x 2 rounds and for 1,000 prompts x K = 10 x 2 rounds, with the
Hamming kernel alone, the word kernel alone, both (the larger z-score: "h|w", the default
until v2) and the default (the ``mixture`` kernel); process pinned to one
CPU, the best of ``--repeats`` runs, numpy's import excluded.

False alarms. Pairs of rounds of an unchanged built-in model (20 prompts, K = 10): how
often the test rejects at alpha 0.05; beside it each kernel's test alone (same
relabellings), the default test (the ``mixture`` kernel) and how often today's
exact match (some job's outputs differ) would have alarmed on the same pairs.

Power. A round of the base setup against a round with one change, ``--trials`` times:
the detection rate at K = 10 (h|w, each kernel alone, the default test, exact match),
the default test's rate at K = 20 and the smallest K from 2 to 20 at
which it detects the change in 90 % of the trials (the first K samples of each side of
the same trials).

Completions come from the built-in model's protocol core (``LocalModelService.handle``,
the code behind the in-process endpoint and ``runner serve``): per prompt and round one
request with ``n = K``, a system message and a user message. An "unseeded" request
carries a seed drawn from this script's generator, fresh for every request: the same
distribution as no seed at all (every request independent), but figures that reproduce.
A setup is a frozen ``Setup``: the endpoint's knobs (variant, nondeterminism,
fingerprints) and every request's parameters.

Run: ``python bench/drift.py [--parts cost,false,power] [--trials 50] [--rounds 100]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from runner.analysis.equality import DEFAULT_KERNELS, EqualityTest, Kernel, equality_test
from runner.localmodel.service import LocalModelService

PROMPTS = (
    "Generate a short excerpt of news about a journey to Mars.",
    "Describe the crew's daily routine on a long space flight.",
    "Write a news report about a new rocket launch.",
    "Tell me about the astronauts growing food on the way to the red planet.",
    "Write a short story about a satellite that watches the Earth.",
    "Write a local news item about the town council and the new bridge.",
    "Give me a recipe for fresh bread with a crisp crust.",
    "Explain how to cook a simple soup of vegetables and beans.",
    "Write a weather forecast for a stormy weekend by the coast.",
    "Describe the first snow of winter in the mountains.",
    "Tell me about life in a medieval market town.",
    "Write a paragraph about an old castle and the people who built it.",
    "Explain how scientists measure the age of rocks.",
    "Describe an experiment with light and lenses.",
    "Report on the final match of the football season.",
    "Write about a marathon runner's training in the rain.",
    "Explain how a computer stores data on a chip.",
    "Describe the birds and foxes of an ancient forest.",
    "Write about the tides and the creatures of the deep ocean.",
    "Describe a busy city street at night, with trains and lights.",
)
SYSTEM = "You are a helpful writing assistant."
ADDED_SENTENCE = " Keep the tone calm and factual."
ALPHA = 0.05
K_MAX = 20


@dataclass(frozen=True)
class Setup:
    """How one round is generated: the endpoint and every request's parameters."""

    label: str
    temperature: float = 0.7
    max_tokens: int = 64
    system: str = SYSTEM
    user_suffix: str = ""
    variant: str | None = None
    seeded: bool = False  # True: one fixed seed per job, the same in every round
    nondeterminism: float = 0.0  # share of seeded completions that leave their seeded text
    fingerprints: tuple[str, ...] | None = None  # served at once, one drawn per response

    def service(self, noise_seed: int = 0) -> LocalModelService:
        return LocalModelService(
            variant=self.variant,
            nondeterminism=self.nondeterminism,
            fingerprints=self.fingerprints,
            noise_seed=noise_seed,
        )


BASE = Setup("unseeded, temperature 0.7, max_tokens 64")

FALSE_ALARM_SETUPS = (
    BASE,
    # Exact mode: seeded, no nondeterminism; every round byte-identical.
    replace(BASE, label="seeded, temperature 0.7 (deterministic endpoint)", seeded=True),
    # A real endpoint's seeded requests: half leave their seeded text at a random token
    # (batch-dependent kernels), under fingerprints that rotate among three values.
    replace(
        BASE,
        label="seeded, temperature 0, nondeterminism 0.5, 3 fp",
        seeded=True,
        temperature=0.0,
        nondeterminism=0.5,
        fingerprints=("fp_a1", "fp_b2", "fp_c3"),
    ),
)

CHANGES = (
    replace(BASE, label="variant v2", variant="v2"),
    replace(BASE, label="temperature 0.7 -> 1.0", temperature=1.0),
    # The built-in model reads the system prompt as context (its words primed, its
    # keywords nudging the topic): the added sentence moves the distribution a little.
    replace(BASE, label="one added sentence in the system prompt", system=SYSTEM + ADDED_SENTENCE),
    replace(BASE, label="max_tokens 64 -> 48", max_tokens=48),
    replace(
        BASE, label="(extra) one added sentence in the user prompt", user_suffix=ADDED_SENTENCE
    ),
)

Round = dict[str, list[str]]
PAIR: tuple[Kernel, ...] = ("hamming", "words")
COST_KERNELS: tuple[tuple[Kernel, ...], ...] = (("hamming",), ("words",), PAIR, DEFAULT_KERNELS)


def draw_round(service: LocalModelService, setup: Setup, k: int, rng: random.Random) -> Round:
    """One round: ``k`` completions for each prompt, keyed ``p00``..``p19``."""
    out: Round = {}
    for index, prompt in enumerate(PROMPTS):
        body = {
            "model": "seed-runner-local",
            "messages": [
                {"role": "system", "content": setup.system},
                {"role": "user", "content": prompt + setup.user_suffix},
            ],
            "temperature": setup.temperature,
            "max_tokens": setup.max_tokens,
            "n": k,
            "seed": 1000 + index if setup.seeded else rng.getrandbits(63),
        }
        answer = service.handle("POST", "/v1/chat/completions", json.dumps(body).encode())
        if answer.status != 200:
            raise RuntimeError(answer.body.decode())
        choices = json.loads(answer.body)["choices"]
        out[f"p{index:02d}"] = [choice["message"]["content"] for choice in choices]
    return out


def first(round_: Round, k: int) -> Round:
    return {key: texts[:k] for key, texts in round_.items()}


def exact_alarm(a: Round, b: Round) -> bool:
    """Today's verdict: some job's outputs differ (every choice compared, in order)."""
    return any(a.get(key) != b.get(key) for key in set(a) | set(b))


def test(a: Round, b: Round, seed: int, permutations: int) -> EqualityTest:
    """The test with kernels ``hamming`` and ``words``, the larger z-score (the default until
    equality VERSION v2); ``alone`` reads each kernel's own p-value."""
    result = equality_test(a, b, permutations=permutations, seed=seed, kernels=PAIR)
    if not isinstance(result, EqualityTest):
        raise RuntimeError(result.reason)
    return result


def mixture(a: Round, b: Round, seed: int, permutations: int) -> bool:
    """Whether the default test (the ``mixture`` kernel) rejects."""
    result = equality_test(a, b, permutations=permutations, seed=seed)
    return isinstance(result, EqualityTest) and result.rejects(ALPHA)


def alone(result: EqualityTest, kernel: str) -> float:
    """The p-value of one kernel's test alone, on the same relabellings."""
    return next(item.p_value for item in result.kernels if item.kernel == kernel)


def rate(flags: Sequence[bool]) -> str:
    return f"{sum(flags) / len(flags):.1%}"


# --- Cost ----------------------------------------------------------------------------------


def synthetic_round(prompts: int, k: int, rng: random.Random) -> Round:
    words = ("the", "a", "rover", "mars", "dust", "crew", "orbit", "launch", "signal", "storm")
    return {
        f"j{i:04d}": [" ".join(rng.choice(words) for _ in range(64)) for _ in range(k)]
        for i in range(prompts)
    }


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def cost(permutations: int, repeats: int) -> None:
    print(f"\n## Cost ({permutations} permutations, best of {repeats} runs)")
    rng = random.Random(7)
    equality_test({"w": ["a", "b"]}, {"w": ["a", "c"]}, permutations=10)  # imports numpy
    print(f"{'round pair':30s} " + " ".join(f"{'+'.join(k):>15s}" for k in COST_KERNELS))
    for prompts, target in ((20, 1.0), (1000, 30.0)):
        a, b = synthetic_round(prompts, 10, rng), synthetic_round(prompts, 10, rng)
        figures = []
        for kernels in COST_KERNELS:

            def run(a: Round = a, b: Round = b, kernels: tuple[Kernel, ...] = kernels) -> None:
                equality_test(a, b, permutations=permutations, kernels=kernels)

            figures.append(best_seconds(run, repeats))
        label = f"{prompts} prompts x K=10 x 2"
        verdict = "ok" if max(figures) < target else "MISSED"
        shown = " ".join(f"{seconds:13.3f} s" for seconds in figures)
        print(f"{label:30s} {shown}  (target < {target:g} s: {verdict})")


# --- False alarms --------------------------------------------------------------------------


def false_alarms(rounds: int, permutations: int, seed: int) -> None:
    print(f"\n## False alarms ({rounds} round pairs, 20 prompts, K=10, alpha {ALPHA})")
    print(
        f"{'setup':50s} {'h|w':>6s} {'hamming':>8s} {'words':>6s} {'default':>8s}"
        f" {'exact':>6s}  p-value min / median"
    )
    for number, setup in enumerate(FALSE_ALARM_SETUPS):
        rng = random.Random(seed * 1000 + number)
        service = setup.service(noise_seed=seed * 1000 + number)
        results, mixed, exact = [], [], []
        for index in range(rounds):
            a = draw_round(service, setup, 10, rng)
            b = draw_round(service, setup, 10, rng)
            results.append(test(a, b, seed=index, permutations=permutations))
            mixed.append(mixture(a, b, seed=index, permutations=permutations))
            exact.append(exact_alarm(a, b))
        p_values = sorted(result.p_value for result in results)
        print(
            f"{setup.label:50s} {rate([r.rejects(ALPHA) for r in results]):>6s}"
            f" {rate([alone(r, 'hamming') <= ALPHA for r in results]):>8s}"
            f" {rate([alone(r, 'words') <= ALPHA for r in results]):>6s} {rate(mixed):>8s}"
            f" {rate(exact):>6s}  {p_values[0]:.3f} / {p_values[len(p_values) // 2]:.3f}"
        )


# --- Power ---------------------------------------------------------------------------------


def smallest_k(trials: Sequence[tuple[Round, Round]], permutations: int) -> int | None:
    """The smallest K from 2 to K_MAX whose detection rate reaches 90 %, or None."""
    for k in range(2, K_MAX + 1):
        hits = [
            mixture(first(a, k), first(b, k), seed=index, permutations=permutations)
            for index, (a, b) in enumerate(trials)
        ]
        if sum(hits) >= 0.9 * len(hits):
            return k
    return None


def power(trials: int, permutations: int, seed: int) -> None:
    print(f"\n## Power ({trials} trials, 20 prompts, alpha {ALPHA}; base: {BASE.label})")
    print(
        f"{'change':48s} {'h|w':>6s} {'hamming':>8s} {'words':>6s} {'default':>8s}"
        f" {'exact':>6s} {'K=20':>6s}  smallest K >= 90 %"
    )
    base_service = BASE.service()
    for number, change in enumerate(CHANGES):
        rng = random.Random(seed * 1000 + 100 + number)
        service = change.service()
        pairs = [
            (draw_round(base_service, BASE, K_MAX, rng), draw_round(service, change, K_MAX, rng))
            for _ in range(trials)
        ]
        results = [
            test(first(a, 10), first(b, 10), seed=index, permutations=permutations)
            for index, (a, b) in enumerate(pairs)
        ]
        exact = [exact_alarm(first(a, 10), first(b, 10)) for a, b in pairs]
        mixed = [
            mixture(first(a, 10), first(b, 10), seed=index, permutations=permutations)
            for index, (a, b) in enumerate(pairs)
        ]
        at_most = [
            mixture(a, b, seed=index, permutations=permutations)
            for index, (a, b) in enumerate(pairs)
        ]
        k = smallest_k(pairs, permutations)
        print(
            f"{change.label:48s} {rate([r.rejects(ALPHA) for r in results]):>6s}"
            f" {rate([alone(r, 'hamming') <= ALPHA for r in results]):>8s}"
            f" {rate([alone(r, 'words') <= ALPHA for r in results]):>6s} {rate(mixed):>8s}"
            f" {rate(exact):>6s} {rate(at_most):>6s}  {k if k is not None else f'> {K_MAX}':>18}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--parts", default="cost,false,power", help="comma-separated parts")
    parser.add_argument("--trials", type=int, default=50, help="power trials per change")
    parser.add_argument("--rounds", type=int, default=100, help="round pairs per false-alarm setup")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cost figure")
    parser.add_argument("--seed", type=int, default=1, help="seeds the completions drawn")
    args = parser.parse_args()
    pinning = "not pinned"
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinning = f"pinned to CPU {cpu}"
    import numpy

    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {os.getloadavg()}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs ({pinning})")
    print(f"python {platform.python_version()}, numpy {numpy.__version__}")
    parts = set(args.parts.split(","))
    if "cost" in parts:
        cost(args.permutations, args.repeats)
    if "false" in parts:
        false_alarms(args.rounds, args.permutations, args.seed)
    if "power" in parts:
        power(args.trials, args.permutations, args.seed)


if __name__ == "__main__":
    main()
