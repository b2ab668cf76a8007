"""Batch rounds through the CLI and the real openai SDK against the built-in Batch API.

Every test runs `runner run` / `runner work` in-process (CliRunner) on both backends,
with a ``type = "local"`` endpoint whose in-process Batch API has the knobs under test.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from runner.db.engine import create_engine_async
from runner.db.types import utcnow
from runner.localmodel.batches import BatchOptions
from runner.localmodel.server import ServerOptions, running_server
from runner.submit import submit
from tests.helpers import scalar, sql, yaml_job
from tests.replaykit import invoke, remote
from tests.schedulekit import run_workers, schedule_settings

pytestmark = pytest.mark.timeout(120)


PRICES = '[prices."test-model"]\ninput = 2.0\noutput = 8.0\n'


def _config(tmp_path: Path, **endpoint: object) -> None:
    """runner.toml with a fast worker and an endpoint ``lb``: the built-in model, batch mode."""
    keys = {"type": "local", "mode": "batch", "batch_turnaround_ms": 50, **endpoint}
    lines = [
        "[worker]",
        "poll_seconds = 0.02",
        "heartbeat_seconds = 0.5",
        "max_attempts = 3",
        "batch_poll_seconds = 0.2",
        "",
        "[endpoints.lb]",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    lines += ["", PRICES]
    (tmp_path / "runner.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _job(tmp_path: Path, count: int) -> Path:
    return yaml_job(tmp_path, count, extra="endpoint: lb\n")


def _by_key(db_url: str, round_number: int) -> dict[str, tuple[object, ...]]:
    rows = sql(
        db_url,
        "SELECT j.key, r.state, r.outputs, j.seed, r.system_fingerprint, r.prompt_tokens, "
        "r.completion_tokens, r.total_tokens, r.response_model, r.finish_reason "
        "FROM runs r JOIN jobs j ON j.id = r.job_id JOIN rounds ro ON ro.id = r.round_id "
        f"WHERE ro.number = {round_number} AND ro.batch_id = 1",
    )
    return {str(row[0]): tuple(row[1:]) for row in rows}


def test_a_batch_round_stores_what_a_sync_round_does(db_url: str, tmp_path: Path) -> None:
    _config(tmp_path)
    job = _job(tmp_path, 6)
    code, out, err = invoke(db_url, "run", str(job), "--progress-interval", "0.05")
    assert code == 0, out + err
    assert "| provider batches: 1 " in err  # the progress lines say what they wait for
    code, out, err = invoke(db_url, "replay", "1", "--via", "sync", "--work")
    assert code == 0, out + err
    batch, sync = _by_key(db_url, 1), _by_key(db_url, 2)
    assert len(batch) == 6
    assert batch == sync  # outputs, seeds, fingerprints, usage: only the way differs
    assert {s for s, *_ in batch.values()} == {"succeeded"}
    assert sql(db_url, "SELECT number, via FROM rounds ORDER BY number") == [
        (1, "batch"),
        (2, "sync"),
    ]
    assert sql(db_url, "SELECT round_number, via FROM round_summary ORDER BY 1") == [
        (1, "batch"),
        (2, "sync"),
    ]
    # Round 1's tries went as lines of one provider batch; round 2's one by one.
    workers = sql(
        db_url,
        "SELECT ro.number, a.worker, count(*) FROM attempts a JOIN runs r ON r.id = a.run_id "
        "JOIN rounds ro ON ro.id = r.round_id GROUP BY ro.number, a.worker ORDER BY ro.number",
    )
    assert workers[0] == (1, "batch:1", 6)
    assert [w for _, w, _ in workers[1:]] and all(
        not w.startswith("batch:") for _, w, _ in workers[1:]
    )
    ((state, provider, count, stored, done),) = sql(
        db_url,
        "SELECT state, provider_state, request_count, stored_count, finished_at IS NOT NULL "
        "FROM provider_batches",
    )
    assert (state, provider, count, stored, bool(done)) == ("done", "completed", 6, 6, True)
    # The operator's view: the round went through the Batch API, at half the price.
    code, out, _ = invoke(db_url, "status", "1")
    assert "round 1 (submit, via the Batch API): 6/6 done" in out
    assert "provider batches: 1 done (6 lines)" in out
    assert "#2: 6/6 done (1 via batch)" in invoke(db_url, "batches")[1]
    code, out, _ = invoke(db_url, "status", "1", "--format", "json")
    rounds = json.loads(out)[0]["rounds"]
    assert [r["via"] for r in rounds] == ["batch", "sync"]
    assert rounds[0]["cost_usd"] == pytest.approx(rounds[1]["cost_usd"] / 2)
    costs = sql(db_url, "SELECT round_number, cost_usd FROM round_costs ORDER BY round_number")
    assert costs[0][1] == pytest.approx(costs[1][1] / 2)


def test_a_round_is_split_by_count_and_by_size(db_url: str, tmp_path: Path) -> None:
    _config(tmp_path, batch_max_requests=4)
    code, out, err = invoke(db_url, "run", str(_job(tmp_path, 10)))
    assert code == 0, out + err
    counts = [c for (c,) in sql(db_url, "SELECT request_count FROM provider_batches ORDER BY id")]
    assert counts == [4, 4, 2]
    # Each line is about 200 bytes: 700 bytes hold a few.
    _config(tmp_path, batch_max_bytes=700)
    code, out, err = invoke(db_url, "replay", "1", "--work")
    assert code == 0, out + err
    sizes = sql(
        db_url,
        "SELECT request_count, input_bytes FROM provider_batches WHERE round_id = 2 ORDER BY id",
    )
    assert len(sizes) >= 3 and sum(c for c, _ in sizes) == 10
    assert all(size <= 700 for _, size in sizes)
    # Every run stored once, by one succeeded attempt.
    assert sql(
        db_url,
        "SELECT count(*), count(DISTINCT r.id) FROM runs r JOIN attempts a ON a.run_id = r.id "
        "WHERE r.state = 'succeeded' AND a.outcome = 'succeeded'",
    ) == [(20, 20)]


def test_an_expired_batch_stores_its_done_part_and_sends_the_rest_again(
    db_url: str, tmp_path: Path
) -> None:
    _config(tmp_path, batch_expire_fraction=0.5, noise_seed=3)
    code, _, _ = invoke(db_url, "run", str(_job(tmp_path, 8)))
    # Half of every batch expires: 8 -> 4 -> 2 -> 1 -> 0 left; three tries are enough
    # only for the runs done early, so some may fail "gave up".
    states = sql(db_url, "SELECT provider_state FROM provider_batches ORDER BY id")
    assert states[0] == ("expired",)
    retried = sql(
        db_url,
        "SELECT count(*) FROM attempts WHERE outcome = 'retry' AND error_type = 'batch_expired'",
    )
    assert retried[0][0] >= 4
    first = sql(db_url, "SELECT stored_count, requeued_count FROM provider_batches WHERE id = 1")
    assert first == [(8, 0)] or first[0][0] + first[0][1] == 8
    # Nothing hangs: every run ended, and each succeeded one has one succeeded attempt.
    assert sql(db_url, "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')") == [(0,)]
    assert sql(
        db_url,
        "SELECT count(*) FROM runs r WHERE r.state = 'succeeded' AND "
        "(SELECT count(*) FROM attempts a WHERE a.run_id = r.id AND a.outcome = 'succeeded') != 1",
    ) == [(0,)]
    assert code == (
        0 if sql(db_url, "SELECT count(*) FROM runs WHERE state = 'failed'") == [(0,)] else 1
    )


def test_line_errors_are_retried_and_a_failed_validation_fails_clearly(
    db_url: str, tmp_path: Path
) -> None:
    _config(tmp_path, batch_line_error_rate=0.4, noise_seed=7)
    invoke(db_url, "run", str(_job(tmp_path, 10)))
    errors = sql(
        db_url,
        "SELECT DISTINCT outcome, error_type, http_status FROM attempts "
        "WHERE outcome != 'succeeded'",
    )
    assert ("retry", "server_error", 500) in errors
    assert sql(db_url, "SELECT count(*) FROM runs WHERE state IN ('queued', 'running')") == [(0,)]
    # A batch that fails validation: its runs come back until their tries are spent, then
    # fail with the provider's error; the command ends, exit 1.
    _config(tmp_path, batch_fail_validation="invalid_json_line")
    code, out, err = invoke(db_url, "replay", "1", "--work")
    assert code == 1, out + err
    failed = sql(
        db_url,
        "SELECT r.state, r.error_type, r.error_message FROM runs r JOIN rounds ro "
        "ON ro.id = r.round_id WHERE ro.number = 2",
    )
    assert len(failed) == 10
    assert {s for s, _, _ in failed} == {"failed"}
    assert all("invalid_json_line" in m and "gave up after 3 attempts" in m for _, _, m in failed)
    assert {
        state
        for (state,) in sql(
            db_url, "SELECT provider_state FROM provider_batches WHERE round_id = 2"
        )
    } == {"failed"}


def test_batch_retry_sync_sends_failed_lines_one_by_one(db_url: str, tmp_path: Path) -> None:
    _config(tmp_path, batch_expire_fraction=0.5, noise_seed=3, batch_retry="sync")
    code, out, err = invoke(db_url, "run", str(_job(tmp_path, 8)))
    assert code == 0, out + err
    assert sql(db_url, "SELECT count(*) FROM provider_batches") == [(1,)]
    ((sync_runs,),) = sql(db_url, "SELECT count(*) FROM runs WHERE via = 'sync'")
    assert sync_runs >= 1
    assert sql(
        db_url,
        "SELECT count(*) FROM attempts WHERE outcome = 'succeeded' AND worker NOT LIKE 'batch:%'",
    ) == [(sync_runs,)]
    assert sql(db_url, "SELECT count(*) FROM runs WHERE state = 'succeeded'") == [(8,)]


def test_a_scheduled_round_via_batch_gets_its_drift_report(db_url: str, tmp_path: Path) -> None:
    _config(tmp_path, mode="sync")
    code, out, err = invoke(db_url, "run", str(_job(tmp_path, 4)))
    assert code == 0, out + err
    code, out, err = invoke(
        db_url, "schedule", "add", "nightly", "1", "--cron", "0 3 * * *", "--via", "batch"
    )
    assert code == 0, out + err
    code, out, err = invoke(
        db_url, "schedule", "run-due", "--now", "2031-01-10T03:00:00Z", "--work"
    )
    assert code == 0, out + err
    assert "batch 1 round 2, 4 runs queued" in out and "drift report 1: stable" in out
    assert sql(db_url, "SELECT number, via FROM rounds ORDER BY number") == [
        (1, "sync"),
        (2, "batch"),
    ]
    assert sql(db_url, "SELECT round_id, state, request_count FROM provider_batches") == [
        (2, "done", 4)
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_racing_workers_never_put_a_run_in_two_provider_batches(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "executed.jsonl"
    options = ServerOptions(
        port=0, log_level="warning", batches=BatchOptions(turnaround_ms=100, log=str(log))
    )
    engine = create_engine_async(db_url)
    try:
        with running_server(options) as url:
            endpoint = replace(remote("serve", url), mode="batch", batch_max_requests=5)
            settings = schedule_settings(db_url, endpoint)
            settings = replace(settings, worker=replace(settings.worker, batch_poll_seconds=0.2))
            job = yaml_job(tmp_path, 40, extra="endpoint: serve\n")
            await submit(engine, job, settings)

            async def done() -> bool:
                return (
                    await scalar(engine, "SELECT count(*) FROM runs WHERE state = 'succeeded'")
                    == 40
                )

            await run_workers(engine, settings, utcnow, done, count=3)
    finally:
        await engine.dispose()
    sizes = [n for (n,) in sql(db_url, "SELECT request_count FROM provider_batches")]
    # Each chunk holds at most 5; one cut short by a rival's locked runs makes one more.
    assert sum(sizes) == 40 and max(sizes) <= 5 and len(sizes) >= 8
    assert sql(
        db_url,
        "SELECT count(*), count(DISTINCT run_id) FROM attempts WHERE outcome = 'succeeded'",
    ) == [(40, 40)]
    executed = Counter(json.loads(line)["custom_id"] for line in log.read_text().splitlines())
    assert len(executed) == 40 and max(executed.values()) == 1


def test_verify_via_batch_runs_every_round_through_the_batch_api(
    db_url: str, tmp_path: Path
) -> None:
    _config(tmp_path, mode="sync")
    code, out, err = invoke(
        db_url, "verify", str(_job(tmp_path, 3)), "--times", "2", "--via", "batch"
    )
    assert code == 0, out + err
    assert sql(db_url, "SELECT DISTINCT via FROM rounds") == [("batch",)]
    assert sql(db_url, "SELECT count(*), sum(request_count) FROM provider_batches") == [(2, 6)]
    assert sql(db_url, "SELECT count(*) FROM runs WHERE state = 'succeeded'") == [(6,)]


def test_a_batch_round_of_mixed_kinds_sends_its_chat_lines_in_provider_batches(
    db_url: str, tmp_path: Path
) -> None:
    """Provider batches carry chat lines: a batch round's responses and embeddings jobs
    go synchronously (runs.via), and the round ends with every run stored once."""
    from tests.integration.test_request_kinds import LINES

    _config(tmp_path)
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in LINES) + "\n", encoding="utf-8")
    code, out, err = invoke(db_url, "run", str(path), "--endpoint", "lb", "--via", "batch")
    assert code == 0, out + err
    rows = sql(
        db_url,
        "SELECT j.api, r.state, r.via, r.attempts FROM runs r JOIN jobs j ON j.id = r.job_id "
        "ORDER BY j.id",
    )
    assert {api for api, *_ in rows} == {"chat", "responses", "embeddings"}
    assert all(state == "succeeded" and attempts == 1 for _, state, _, attempts in rows)
    assert {api: via for api, _, via, _ in rows} == {
        "chat": None,
        "responses": "sync",
        "embeddings": "sync",
    }
    chat = sum(1 for api, *_ in rows if api == "chat")
    assert sql(db_url, "SELECT sum(request_count) FROM provider_batches") == [(chat,)]


@pytest.mark.anyio
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_three_workers_run_a_nightly_tick_via_batch_once_with_its_drift_report(
    db_url: str, tmp_path: Path
) -> None:
    """A scheduled round via the Batch API on PostgreSQL with 3 general workers: one round
    for the tick, its runs in provider batches each sent once, one drift report."""
    from datetime import UTC, datetime

    from runner.scheduling.schedule import add_schedule
    from tests.replaykit import work
    from tests.schedulekit import Clock, nightly_job

    log = tmp_path / "executed.jsonl"
    options = ServerOptions(
        port=0, log_level="warning", batches=BatchOptions(turnaround_ms=100, log=str(log))
    )
    created = datetime(2026, 11, 20, 12, tzinfo=UTC)
    engine = create_engine_async(db_url)
    try:
        with running_server(options) as url:
            endpoint = replace(remote("serve", url), batch_max_requests=5)
            settings = schedule_settings(db_url, endpoint)
            settings = replace(settings, worker=replace(settings.worker, batch_poll_seconds=0.2))
            path = nightly_job(tmp_path, 12, endpoint="serve")
            first = await submit(engine, path, settings, now=created)
            await work(engine, settings, [first.round_id])
            await add_schedule(engine, "batched", "1", cron="0 3 * * *", via="batch", now=created)

            async def reported() -> bool:
                return bool(
                    await scalar(
                        engine,
                        "SELECT count(*) FROM drift_reports d JOIN schedules s "
                        "ON s.id = d.schedule_id WHERE s.name = 'batched'",
                    )
                )

            clock = Clock(datetime(2026, 11, 21, 3, 0, 1, tzinfo=UTC))
            await run_workers(engine, settings, clock, reported, count=3)
    finally:
        await engine.dispose()
    # The job file's own schedule ('nightly', sync) ticks too: only 'batched' goes via batch.
    batch_rounds = sql(db_url, "SELECT id FROM rounds WHERE via = 'batch'")
    assert len(batch_rounds) == 1
    (round_id,) = batch_rounds[0]
    sizes = [
        n
        for (n,) in sql(
            db_url, f"SELECT request_count FROM provider_batches WHERE round_id = {round_id}"
        )
    ]
    assert sum(sizes) == 12 and max(sizes) <= 5
    assert sql(
        db_url,
        "SELECT count(*), count(DISTINCT r.id) FROM attempts a JOIN runs r ON r.id = a.run_id "
        f"WHERE a.outcome = 'succeeded' AND r.round_id = {round_id}",
    ) == [(12, 12)]
    executed = Counter(json.loads(line)["custom_id"] for line in log.read_text().splitlines())
    assert len(executed) == 12 and max(executed.values()) == 1
    reports = sql(
        db_url,
        "SELECT d.status FROM drift_reports d JOIN schedules s ON s.id = d.schedule_id "
        "WHERE s.name = 'batched'",
    )
    assert reports == [("stable",)]  # seeded on a deterministic model: the same outputs
