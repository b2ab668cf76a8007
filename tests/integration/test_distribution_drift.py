"""The distribution test in drift reports and compare, on both backends, through the CLI.

A nightly schedule on a nondeterministic built-in endpoint (seeded requests that leave
their seeded text half the time, as real servers do) is ``within_noise`` and runs no
on-drift command; the same schedule after the backend changed (``variant``) is
``distribution_changed`` and runs it once. One worker slot makes the noise draws
land on the same requests every time, so the verdicts are reproducible.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tests.helpers import sql
from tests.replaykit import invoke


def configure(tmp_path: Path, *, noise_seed: int, variant: str | None = None) -> None:
    lines = [
        "[worker]", "concurrency = 1", "poll_seconds = 0.02", "max_attempts = 2", "",
        "[endpoints.noisy]", 'type = "local"', "nondeterminism = 0.5",
        f"noise_seed = {noise_seed}",
    ]  # fmt: skip
    if variant:
        lines.append(f'variant = "{variant}"')
    (tmp_path / "runner.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def job_file(tmp_path: Path, samples: int) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: t\nendpoint: noisy\nmodel: test-model\n"
        "messages: [{role: user, content: 'Tell me about {topic}.'}]\n"
        f"vars: {{topic: [{', '.join(f'topic{i}' for i in range(8))}]}}\n"
        f"seed: 42\nsamples: {samples}\nparams: {{max_tokens: 24, temperature: 0}}\n",
        encoding="utf-8",
    )
    return path


def test_noise_is_within_noise_and_a_changed_backend_is_distribution_changed(
    db_url: str, tmp_path: Path
) -> None:
    configure(tmp_path, noise_seed=1)
    code, _, err = invoke(db_url, "run", str(job_file(tmp_path, 10)))
    assert code == 0, err
    code, _, err = invoke(
        db_url, "schedule", "add", "nightly", "t", "--cron", "0 3 * * *",
        "--on-drift", f"echo ran >> {tmp_path / 'hook.log'}",
    )  # fmt: skip
    assert code == 0, err
    configure(tmp_path, noise_seed=2)  # other noise, same model: outputs differ
    code, out, err = invoke(
        db_url, "schedule", "run-due", "--now", "2031-01-10T03:00:00Z", "--work"
    )
    assert code == 0, err
    assert out.endswith("drift report 1: within_noise\n")
    assert not (tmp_path / "hook.log").exists()
    ((status, p_value, exact),) = sql(
        db_url, "SELECT status, p_value, exact_matches FROM drift_reports"
    )
    assert status == "within_noise" and p_value > 0.05 and exact < 8  # outputs did differ
    code, out, err = invoke(db_url, "compare", "t", "--fail-on", "distribution_changed")
    assert code == 0, err
    assert "within noise: p = " in out and "8 jobs, 80 + 80 samples" in out

    configure(tmp_path, noise_seed=3, variant="v2")  # the backend changed behind the name
    code, out, err = invoke(
        db_url, "schedule", "run-due", "--now", "2031-01-11T03:00:00Z", "--work"
    )
    assert code == 0, err
    assert "drift report 2: distribution_changed (on-drift command pending)\n" in out
    assert (tmp_path / "hook.log").read_text() == "ran\n"
    code, out, err = invoke(db_url, "compare", "t", "--fail-on", "distribution_changed")
    assert code == 1
    assert "the output distribution changed: p = " in err
    assert "changed: p = " in out and "moved most" in out
    code, out, _ = invoke(db_url, "compare", "t", "--format", "json")
    document = json.loads(out)
    assert document["distribution"]["distribution"] == "changed"
    assert document["distribution"]["p_value"] <= 0.05
    assert len(document["distribution"]["moved_most"]) == 5
    code, out, _ = invoke(db_url, "compare", "t", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 8 and {r["distribution"] for r in rows} == {"changed"}
    assert all(r["samples_a"] == r["samples_b"] == "10" and r["test_p_value"] for r in rows)
    stored = sql(
        db_url,
        "SELECT distribution, test_jobs, test_samples_a, test_permutations, alpha "
        "FROM comparisons ORDER BY id",
    )
    assert [row[0] for row in stored] == ["same"] * 2 + ["changed"] * 4
    assert stored[-1][1:] == (8, 80, 1000, 0.05)
    # The on-drift command ran once, for the second report only.
    hooks = sql(db_url, "SELECT status, on_drift_state FROM drift_reports ORDER BY id")
    assert hooks == [("within_noise", None), ("distribution_changed", "succeeded")]


def test_one_sample_per_job_is_not_enough_for_a_test(db_url: str, tmp_path: Path) -> None:
    configure(tmp_path, noise_seed=1)
    assert invoke(db_url, "run", str(job_file(tmp_path, 1)))[0] == 0
    configure(tmp_path, noise_seed=2)
    assert invoke(db_url, "replay", "t", "--work")[0] == 0
    code, out, err = invoke(db_url, "compare", "t", "--fail-on", "distribution_changed")
    assert code == 0, err
    assert "not tested: not enough samples for a test" in out
    assert out.count("not enough samples") == 1  # said once, not twice
    (row,) = sql(db_url, "SELECT distribution, test_p_value, test_note FROM comparisons")
    assert row[:2] == ("not_tested", None) and str(row[2]).startswith("not enough samples")
    code, _, err = invoke(db_url, "compare", "t", "--alpha", "1.5")
    assert code == 2 and "Invalid value for '--alpha'" in err
