"""Verify on both backends: K identical runs per job, and the determinism report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.analysis.verify import first_divergence, verify
from runner.config import EndpointConfig
from runner.errors import JobFileError, NotFoundError
from runner.localmodel.service import LocalModelService
from tests.helpers import rows, scalar, submit_jobs
from tests.replaykit import invoke, settings_with, work

pytestmark = pytest.mark.anyio
MARS_NEWS = Path(__file__).resolve().parents[2] / "jobs" / "mars-news.yaml"


async def test_mars_news_seeded_half_identical_unseeded_half_varying(
    engine: AsyncEngine, db_url: str
) -> None:
    settings = settings_with(db_url)
    report = await verify(engine, settings, str(MARS_NEWS), times=3)
    assert (report.batch_name, report.times, report.round_numbers) == ("mars-news", 3, [1, 2, 3])
    assert (report.failed_runs, report.unfinished_runs) == (0, 0)
    verdicts = {j.key: j for j in report.jobs}
    assert len(verdicts) == 10
    for rep in range(1, 6):
        seeded, unseeded = verdicts[f"seeded-{rep}"], verdicts[f"unseeded-{rep}"]
        assert (seeded.unique_outputs, seeded.tarr, seeded.mean_similarity) == (1, True, 1.0)
        assert seeded.seed == 123 and len(seeded.fingerprints) == 1
        assert unseeded.unique_outputs == 3 and not unseeded.tarr
        assert unseeded.mean_similarity is not None and unseeded.mean_similarity < 1.0
    by_seed = {g.seeded: g for g in report.groups}
    assert (by_seed[True].jobs, by_seed[True].tarr, by_seed[True].mean_unique) == (5, 5, 1.0)
    assert (by_seed[False].jobs, by_seed[False].tarr, by_seed[False].mean_unique) == (5, 0, 3.0)
    assert {(g.endpoint, g.model) for g in report.groups} == {("local", "gpt-4-1106-preview")}
    # The rounds are ordinary rounds: three runs of each job, same request bodies.
    triggers = await rows(engine, "SELECT trigger, selection FROM rounds ORDER BY number")
    assert [tuple(t) for t in triggers] == [("submit", None), *[("replay", "verify")] * 2]
    assert await scalar(engine, "SELECT count(*) FROM runs WHERE request_hash IS NULL") == 30


async def test_verify_a_batch_adds_k_rounds_and_bad_targets_write_nothing(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = settings_with(db_url)
    sub = await submit_jobs(engine, tmp_path, 4, settings)
    await work(engine, settings, [sub.round_id])
    report = await verify(engine, settings, "t", times=2)
    assert report.round_numbers == [2, 3]
    assert all(j.tarr and j.unique_outputs == 1 for j in report.jobs)  # seeded: identical
    ((g),) = report.groups
    assert (g.jobs, g.tarr_rate, g.seeded) == (4, 1.0, True)
    with pytest.raises(NotFoundError, match="no batch 'nope'"):
        await verify(engine, settings, "nope", times=2)
    with pytest.raises(JobFileError, match=r"missing\.yaml: no such file"):
        await verify(engine, settings, str(tmp_path / "missing.yaml"), times=2)
    assert await scalar(engine, "SELECT count(*) FROM rounds") == 3
    assert await scalar(engine, "SELECT count(*) FROM batches") == 1


async def test_verify_on_a_nondeterministic_local_endpoint_sees_the_seeded_noise(
    engine: AsyncEngine, db_url: str
) -> None:
    """The endpoint config's knobs reach the in-process model the worker sends to: every
    seeded run leaves the deterministic text after its first word, fingerprints rotate."""
    fingerprints = ("fp_a1", "fp_b2", "fp_c3")
    noisy = EndpointConfig(
        name="local", type="local", nondeterminism=1.0, fingerprints=fingerprints, noise_seed=8
    )
    report = await verify(engine, settings_with(db_url, noisy), str(MARS_NEWS), times=3)
    assert (report.failed_runs, report.unfinished_runs) == (0, 0)
    body = json.loads(await scalar(engine, "SELECT body FROM jobs WHERE key = 'seeded-1'"))
    deterministic = LocalModelService().complete(body)["choices"][0]["message"]["content"]
    seeded = await rows(
        engine,
        "SELECT output, system_fingerprint FROM run_results WHERE job_key LIKE 'seeded-%'",
    )
    assert len(seeded) == 15
    first_word = deterministic.split(" ")[0]
    assert all(o != deterministic and o.startswith(first_word) for o, _ in seeded)
    every = await rows(engine, "SELECT DISTINCT system_fingerprint FROM run_results")
    assert {fp for (fp,) in every} == set(fingerprints)
    # The report shows each job's own noise: distinct texts, and where they part.
    seeded_jobs = [j for j in report.jobs if j.key.startswith("seeded-")]
    assert len(seeded_jobs) == 5
    for job in seeded_jobs:
        assert job.samples == 3 and job.distinct_samples >= 2
        assert job.diverges_at is not None and job.diverges_at >= 1  # the first word is kept
        assert job.n_honoured is None  # one sample per run: nothing to honour


def test_first_divergence_counts_words() -> None:
    assert first_divergence(["a b c", "a b c"]) is None
    assert first_divergence(["a b c", "a x c", "a b c"]) == 1
    assert first_divergence(["a b", "a b c"]) == 2
    assert first_divergence(["x", "y"]) == 0


def test_cli_verify(db_url: str, tmp_path: Path) -> None:
    code, out, err = invoke(db_url, "verify", str(MARS_NEWS), "--times", "2", "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    assert document["times"] == 2 and document["rounds"] == [1, 2]
    tarr = {g["seeded"]: g["tarr_rate"] for g in document["groups"]}
    assert tarr == {True: 1.0, False: 0.0}
    code, out, _ = invoke(db_url, "verify", "mars-news", "-k", "2", "--top", "3")
    assert code == 0
    assert "verify batch 1 (mars-news): 10 jobs x 2 runs (rounds 3-4)" in out
    assert "per job (the 3 least deterministic; --format json: all)" in out
    assert "5/5 (100.0%)" in out and "0/5 (0.0%)" in out
    code, _, err = invoke(db_url, "verify", "mars-news", "--times", "1")
    assert code == 2 and "1 is not in the range 2<=x<=1000" in err
    code, _, err = invoke(db_url, "verify", "nope.yaml")
    assert code == 2 and err == "error: nope.yaml: no such file\n"
