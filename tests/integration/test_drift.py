"""Drift reports on both backends: a backend update behind an endpoint, failures, hooks.

The batch runs once against the built-in model's HTTP server; then the server behind the
same endpoint name is replaced by a changed model (``variant``), as a provider update
would, and the next night's scheduled round must report ``fingerprint_changed`` and run
the on-drift command, once, with the report as JSON on stdin, however many workers run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.localmodel.server import ServerOptions, running_server
from runner.scheduling import schedule
from runner.submit import submit
from tests.fakeserver import Reply, fake_server
from tests.helpers import rows, scalar
from tests.replaykit import remote, work
from tests.schedulekit import Clock, nightly_job, run_workers, schedule_settings

pytestmark = pytest.mark.anyio

CREATED = datetime(2026, 11, 20, 12, tzinfo=UTC)
TICK = datetime(2026, 11, 21, 3, tzinfo=UTC)


async def hook_done(engine: AsyncEngine) -> bool:
    state = await scalar(engine, "SELECT max(on_drift_state) FROM drift_reports")
    return state in ("succeeded", "failed")


async def test_a_backend_update_reports_fingerprint_changed_and_runs_the_hook_once(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    job = nightly_job(tmp_path, 4, endpoint="serve", on_drift=f"cat > {hooks}/report-$$.json")
    with running_server(ServerOptions(port=0, log_level="warning")) as before_url:
        settings = schedule_settings(db_url, remote("serve", before_url))
        sub = await submit(engine, job, settings, now=CREATED)
        await work(engine, settings, [sub.round_id])
    with running_server(ServerOptions(port=0, variant="v2", log_level="warning")) as after_url:
        updated = schedule_settings(db_url, remote("serve", after_url))
        workers = await run_workers(
            engine, updated, Clock(TICK), lambda: hook_done(engine), count=3
        )
    assert sum(w.stats.succeeded for w in workers) == 4  # the tick ran once, not 3 times
    assert await scalar(engine, "SELECT count(*) FROM rounds WHERE trigger = 'schedule'") == 1
    (report,) = await rows(
        engine,
        "SELECT id, status, matched, exact_matches, fingerprint_changed, fingerprints_before, "
        "fingerprints_after, on_drift_state, on_drift_exit_code, on_drift_worker, "
        "comparison_id FROM drift_reports",
    )
    assert report[1:5] == ("fingerprint_changed", 4, 0, 4)
    assert report[5] != report[6] and report[5].startswith("fp_") and report[6].startswith("fp_")
    assert report[7:9] == ("succeeded", 0)
    assert report[9] in {w.id for w in workers}
    # Exactly one command ran (each shell writes its own file), with the report on stdin.
    (written,) = list(hooks.iterdir())
    payload = json.loads(written.read_text())
    assert payload["report_id"] == report[0]
    assert payload["status"] == "fingerprint_changed"
    assert payload["schedule"] == "nightly"
    assert payload["round"] == {"id": payload["round"]["id"], "number": 2,
                                "scheduled_for": "2026-11-21T03:00:00Z"}  # fmt: skip
    assert payload["previous_round"] == {"id": sub.round_id, "number": 1}
    assert (payload["matched"], payload["exact_matches"], payload["failed"]) == (4, 0, 0)
    assert payload["fingerprints_before"] == [report[5]]
    assert payload["fingerprints_after"] == [report[6]]
    assert payload["comparison_id"] == report[10]
    assert len(payload["changed_jobs"]) == 4
    assert {j["fingerprint"] for j in payload["changed_jobs"]} == {"changed"}


async def test_failures_come_first_and_a_failing_hook_is_recorded_not_fatal(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    command = "cat > /dev/null; echo 'pager is down' >&2; exit 3"
    job = nightly_job(tmp_path, 3, endpoint="serve", on_drift=command)
    with fake_server() as server:
        settings = schedule_settings(db_url, remote("serve", server.base_url))
        sub = await submit(engine, job, settings, now=CREATED)
        await work(engine, settings, [sub.round_id])

    def refuse(request: object, count: int) -> Reply:
        return Reply(400, {"error": {"message": "model retired", "type": "invalid_request_error",
                                     "code": "model_not_found"}})  # fmt: skip

    with fake_server(refuse) as broken:
        settings = schedule_settings(db_url, remote("serve", broken.base_url))
        workers = await run_workers(engine, settings, Clock(TICK), lambda: hook_done(engine))
    assert workers[0].stats.failed == 3
    (report,) = await rows(
        engine,
        "SELECT status, failed, exact_matches, on_drift_state, on_drift_exit_code, "
        "on_drift_error FROM drift_reports",
    )
    assert report[:5] == ("failures", 3, 0, "failed", 3)
    assert report[5] == "exit 3: pager is down"


async def test_a_report_with_no_earlier_round_is_a_baseline(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    hook = tmp_path / "hook.json"
    sub = await submit(
        engine, nightly_job(tmp_path, 2, on_drift=f"cat > {hook}"), settings, now=CREATED
    )
    # Round 1 was never worked: the night's round has nothing finished to compare with.
    (made,) = await schedule.tick(engine, settings, TICK)
    await work(engine, settings, [made.round.round_id])
    result = await schedule.run_pass(engine, settings, lambda: TICK, "test")
    assert [r.status.value for r in result.reports] == ["baseline"]
    assert result.hooks == [] and not hook.exists()
    (report,) = await rows(
        engine,
        "SELECT previous_round_id, comparison_id, exact_match_rate, fingerprints_before, "
        "fingerprints_after FROM drift_reports",
    )
    assert report[:4] == (None, None, None, None) and report[4].startswith("fp_")
    assert await scalar(engine, "SELECT count(*) FROM runs WHERE round_id = :r AND "
                        "state = 'queued'", r=sub.round_id) == 2  # fmt: skip
