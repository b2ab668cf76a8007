"""Cron ticks, the missed-tick policy, schedule: in job files and drift statuses: no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.analysis.compare import Result, compare_pair, samples, summarize
from runner.analysis.distribution import distribution_test
from runner.analysis.drift import alarms, classify
from runner.db.models import DriftStatus
from runner.errors import JobFileError, ScheduleError
from runner.jobfile import load_job_file
from runner.scheduling.cron import (
    CatchUp,
    parse_cron,
    parse_now,
    parse_schedule_block,
    shifted_clock,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------- cron


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("0 3 * * * *", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("61 * * * *", "out of range"),
        ("0 3 * * 8", "out of range"),
        ("0 0 30 2 *", "never fires"),
        ("@sometimes", "expected 5 fields"),
    ],
)
def test_invalid_cron_expressions_say_what_is_expected(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message) as err:
        parse_cron(expression)
    assert err.value.exit_code == 2
    assert "\n" not in err.value.message


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/Pariss", "../etc/passwd", ""])
def test_unknown_time_zones_are_refused(zone: str) -> None:
    with pytest.raises(ScheduleError, match=r"unknown time zone .* IANA name"):
        parse_cron("0 3 * * *", zone)


def test_ticks_follow_the_time_zone_across_daylight_saving() -> None:
    paris = parse_cron("0 3 * * *", "Europe/Paris")
    # 03:00 in Paris is 02:00 UTC in winter and 01:00 UTC in summer (DST began 2026-03-29).
    assert paris.next_after(utc(2026, 3, 27, 12)) == utc(2026, 3, 28, 2)
    assert paris.next_after(utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)
    assert parse_cron("@daily").next_after(utc(2026, 1, 1, 0)) == utc(2026, 1, 2)


def test_a_tick_is_due_at_its_own_instant() -> None:
    cron = parse_cron("0 3 * * *")
    assert cron.latest_at_or_before(utc(2026, 11, 23, 3)) == utc(2026, 11, 23, 3)
    assert cron.latest_at_or_before(utc(2026, 11, 23, 2, 59)) == utc(2026, 11, 22, 3)
    assert cron.due(utc(2026, 11, 22, 3), utc(2026, 11, 23, 3), CatchUp.LATEST) == [
        utc(2026, 11, 23, 3)
    ]
    assert cron.due(utc(2026, 11, 23, 3), utc(2026, 11, 23, 3), CatchUp.ALL) == []


def test_missed_ticks_latest_runs_only_the_most_recent_all_runs_each() -> None:
    cron = parse_cron("0 3 * * *")
    cursor, now = utc(2026, 11, 20, 12), utc(2026, 11, 23, 12)  # three nights missed
    assert cron.due(cursor, now, CatchUp.LATEST) == [utc(2026, 11, 23, 3)]
    assert cron.due(cursor, now, CatchUp.ALL) == [
        utc(2026, 11, 21, 3),
        utc(2026, 11, 22, 3),
        utc(2026, 11, 23, 3),
    ]
    assert cron.due(utc(2026, 11, 23, 3), now, CatchUp.LATEST) == []  # already ran


def test_now_and_the_shifted_clock() -> None:
    assert parse_now("2026-11-23T03:00:00Z") == utc(2026, 11, 23, 3)
    assert parse_now("2026-11-23T04:00:00+01:00") == utc(2026, 11, 23, 3)
    assert parse_now("2026-11-23 03:00") == utc(2026, 11, 23, 3)
    with pytest.raises(ScheduleError, match="ISO 8601"):
        parse_now("tomorrow")
    real = iter([utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 5)])
    clock = shifted_clock(utc(2026, 11, 23, 3), lambda: next(real))
    assert clock() == utc(2026, 11, 23, 3) + timedelta(seconds=5)


# ---------------------------------------------------------------- job files


def job_file(tmp_path: Path, schedule: str) -> Path:
    path = tmp_path / "nightly.yaml"
    path.write_text(
        "name: nightly\nmodel: m\nmessages: [{role: user, content: hi}]\n" + schedule,
        encoding="utf-8",
    )
    return path


def test_a_schedule_in_a_job_file(tmp_path: Path) -> None:
    loaded = load_job_file(
        job_file(
            tmp_path,
            "schedule:\n  cron: '0 3 * * *'\n  timezone: Europe/Paris\n  catch_up: all\n"
            "  on_drift: cat > drift.json\n  name: every-night\n",
        )
    )
    assert loaded.schedule is not None
    assert (loaded.schedule.cron.expression, loaded.schedule.cron.timezone) == (
        "0 3 * * *",
        "Europe/Paris",
    )
    assert loaded.schedule.catch_up is CatchUp.ALL
    assert (loaded.schedule.name, loaded.schedule.on_drift) == ("every-night", "cat > drift.json")
    short = load_job_file(job_file(tmp_path, "schedule: '@daily'\n")).schedule
    assert short is not None and short.cron.timezone == "UTC" and short.name is None
    assert load_job_file(job_file(tmp_path, "")).schedule is None
    reported = "schedule:\n  cron: '@daily'\n  report: 'reports/{date}-r{round}.html'\n"
    spec = load_job_file(job_file(tmp_path, reported)).schedule
    assert spec is not None and spec.report == "reports/{date}-r{round}.html"


@pytest.mark.parametrize(
    ("schedule", "line", "field", "problem"),
    [
        ("schedule:\n  cron: '0 25 * * *'\n", 5, "schedule.cron", "out of range"),
        ("schedule:\n  cron: '0 3 * * *'\n  timezone: Nowhere\n", 6, "schedule.timezone",
         "unknown time zone"),
        ("schedule:\n  timezone: UTC\n", 4, "schedule", "'cron' is required"),
        ("schedule:\n  cron: '0 3 * * *'\n  when: now\n", 6, "schedule.when", "unknown key"),
        ("schedule:\n  cron: '0 3 * * *'\n  catch_up: some\n", 6, "schedule.catch_up",
         "unknown catch-up policy"),
        ("schedule: [1, 2]\n", 4, "schedule", "must be a cron string or a mapping"),
        ("schedule:\n  cron: 3\n", 5, "schedule.cron", "must be a non-empty string"),
        ("schedule:\n  cron: '0 3 * * *'\n  report: 'r-{day}.html'\n", 6, "schedule.report",
         "only use the placeholders {date} and {round}"),
    ],
)  # fmt: skip
def test_schedule_errors_name_file_line_and_field(
    tmp_path: Path, schedule: str, line: int, field: str, problem: str
) -> None:
    path = job_file(tmp_path, schedule)
    with pytest.raises(JobFileError) as err:
        load_job_file(path)
    assert (err.value.line, err.value.field) == (line, field)
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}:{line}: {field}: ")


def test_parse_schedule_block_reports_through_the_callback() -> None:
    seen: list[tuple[str | None, str]] = []

    def fail(field: str | None, problem: str):  # type: ignore[no-untyped-def]
        seen.append((field, problem))
        raise ValueError(problem)

    with pytest.raises(ValueError):
        parse_schedule_block({"cron": "0 3 * * *", "name": " padded"}, fail)
    assert seen[0][0] == "name"


# ---------------------------------------------------------------- drift statuses


def result(
    key: str,
    *,
    ok: bool = True,
    text: str = "same",
    fp: str | None = "fp_a",
    samples: tuple[str, ...] | None = None,
) -> Result:
    outputs = samples or (text,)
    return Result(
        run_id=1,
        job_id=1,
        key=key,
        state="succeeded" if ok else "failed",
        output=outputs[0] if ok else None,
        outputs=outputs if ok else (),
        fingerprint=fp if ok else None,
        sent_hash="v1:x",
    )


def judged(before: list[Result], after: list[Result]) -> tuple[DriftStatus, bool]:
    items = [compare_pair(a, b) for a, b in zip(before, after, strict=True)]
    summary, tested = summarize(items), distribution_test(samples(items))
    found = classify(summary, sum(not r.ok for r in after), tested)
    return found, alarms(found, summary, tested)


def status(before: list[Result], after: list[Result]) -> DriftStatus:
    return judged(before, after)[0]


def test_drift_status_precedence() -> None:
    same = [result("a"), result("b")]
    assert status(same, [result("a"), result("b")]) is DriftStatus.STABLE
    # One sample per job: no test, exact match is all there is.
    assert status(same, [result("a"), result("b", text="other")]) is DriftStatus.OUTPUTS_CHANGED
    # A changed fingerprint explains changed outputs: it is reported instead.
    changed = [result("a", fp="fp_b", text="other"), result("b", fp="fp_b")]
    assert judged(same, changed) == (DriftStatus.FINGERPRINT_CHANGED, True)
    # A failure comes first, whatever else changed.
    assert status(same, [result("a", fp="fp_b"), result("b", ok=False)]) is DriftStatus.FAILURES
    # Recovering from an earlier failure is a change of outputs, not stability.
    assert status([result("a", ok=False)], [result("a")]) is DriftStatus.OUTPUTS_CHANGED
    # An unknown (null) fingerprint is not a change of fingerprint.
    assert status([result("a", fp=None)], [result("a", fp=None)]) is DriftStatus.STABLE
    none = distribution_test({})
    assert classify(None, 0, none) is DriftStatus.BASELINE
    assert classify(None, 2, none) is DriftStatus.FAILURES


NOISY = ("The sky is blue.", "The sky is grey.", "The sky is blue today.", "The sky is clear.")


def noisy(key: str, shift: int, *, fp: str = "fp_a", other: bool = False) -> Result:
    """Ten samples drawn from NOISY (rotated by ``shift``), or from other text."""
    texts = tuple(NOISY[(i + shift) % len(NOISY)] for i in range(10))
    if other:
        texts = tuple(f"Completely different answer number {i}." for i in range(10))
    return result(key, fp=fp, samples=texts)


def test_drift_with_samples_tells_noise_from_a_change() -> None:
    keys = [f"job{i}" for i in range(6)]
    before = [noisy(k, 0) for k in keys]
    # The same mix of outputs, in another order: outputs differ, the test does not reject.
    assert judged(before, [noisy(k, 1) for k in keys]) == (DriftStatus.WITHIN_NOISE, False)
    # Another distribution: it rejects, and the command runs.
    changed = [noisy(k, 0, other=True) for k in keys]
    assert judged(before, changed) == (DriftStatus.DISTRIBUTION_CHANGED, True)
    # A rotated fingerprint with outputs within noise is reported, not alarmed.
    rotated = [noisy(k, 1, fp="fp_b") for k in keys]
    assert judged(before, rotated) == (DriftStatus.FINGERPRINT_CHANGED, False)
    # A rotated fingerprint and a changed distribution: the change is what counts.
    moved = [noisy(k, 0, fp="fp_b", other=True) for k in keys]
    assert judged(before, moved) == (DriftStatus.DISTRIBUTION_CHANGED, True)


def test_drift_status_values_are_the_documented_ones() -> None:
    assert json.dumps(sorted(s.value for s in DriftStatus)) == json.dumps(
        [
            "baseline",
            "distribution_changed",
            "failures",
            "fingerprint_changed",
            "outputs_changed",
            "stable",
            "within_noise",
        ]
    )
