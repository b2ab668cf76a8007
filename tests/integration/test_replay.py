"""Replay on both backends: byte-identical bodies, overrides on the round, selections, reuse.

A recording fake server shows what is really sent; the local model shows that a seeded
replay reproduces every output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.analysis.compare import compare
from runner.errors import ConfigError, NotFoundError, RunnerError
from runner.hashing import canonical_json, request_hash
from runner.replay import Selection, replay
from runner.submit import submit
from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import rows, scalar, submit_jobs, yaml_job
from tests.replaykit import invoke, remote, settings_with, work, write_config

pytestmark = pytest.mark.anyio


async def test_replay_of_a_local_batch_reproduces_every_output_and_request_hash(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = settings_with(db_url)
    sub = await submit_jobs(engine, tmp_path, 12, settings)
    await work(engine, settings, [sub.round_id])
    replayed = await replay(engine, settings, "t")
    assert (replayed.round_number, replayed.queued, replayed.reused) == (2, 12, 0)
    await work(engine, settings, [replayed.round_id])

    runs = await rows(
        engine,
        "SELECT ro.number, ro.trigger, ro.selection, ro.endpoint, ro.model, ro.reuse, j.key, "
        "coalesce(r.request_hash, j.request_hash) AS sent_hash, r.state, r.output "
        "FROM runs r JOIN jobs j ON j.id = r.job_id JOIN rounds ro ON ro.id = r.round_id "
        "ORDER BY j.key, ro.number",
    )
    assert len(runs) == 24
    for first, second in zip(runs[::2], runs[1::2], strict=True):
        assert (first.number, second.number, second.trigger) == (1, 2, "replay")
        assert (second.selection, second.endpoint, second.model) == ("all", None, None)
        assert not second.reuse
        assert first.key == second.key and first.sent_hash == second.sent_hash
        assert first.state == second.state == "succeeded"
        assert first.output == second.output and first.output
    report = await compare(engine, settings, "t")
    assert (report.summary.matched, report.summary.overall.exact) == (12, 12)
    assert report.summary.exact_match_rate == 1.0
    assert all(item.same_request for item in report.items)


async def test_replay_sends_the_stored_bytes_and_overrides_change_only_what_they_say(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    with fake_server() as server:
        settings = settings_with(db_url, remote("fake", server.base_url))
        sub = await submit(engine, yaml_job(tmp_path, 3), settings, endpoint="fake")
        await work(engine, settings, [sub.round_id])
        plain = await replay(engine, settings, str(sub.batch_id))
        await work(engine, settings, [plain.round_id])
        other_model = await replay(engine, settings, str(sub.batch_id), model="gpt-4o")
        await work(engine, settings, [other_model.round_id])
    received = [r.body for r in server.received]
    first, second, third = received[:3], received[3:6], received[6:]
    assert sorted(first) == sorted(second)  # the same bytes on the wire
    jobs = {r.key: r for r in await rows(engine, "SELECT key, body, request_hash FROM jobs")}
    for body in third:
        sent = json.loads(body)
        key = "topic=" + sent["messages"][0]["content"].split()[-1].rstrip(".")
        original = json.loads(jobs[key].body)
        assert sent == {**original, "model": "gpt-4o"}  # only the model differs
    stored = await rows(
        engine,
        "SELECT j.key, r.request_hash, ro.model, ro.endpoint FROM runs r "
        "JOIN jobs j ON j.id = r.job_id JOIN rounds ro ON ro.id = r.round_id "
        "WHERE ro.number = 3",
    )
    for run in stored:
        assert (run.model, run.endpoint) == ("gpt-4o", None)
        expected = with_model_hash(jobs[run.key].body, "gpt-4o")
        assert run.request_hash == expected != jobs[run.key].request_hash
    assert {request_hash(canonical_json(json.loads(b))) for b in third} == {
        r.request_hash for r in stored
    }
    plain_hashes = await rows(
        engine, "SELECT request_hash FROM runs r JOIN rounds ro ON ro.id = r.round_id "
        "WHERE ro.number IN (1, 2)",
    )  # fmt: skip
    assert {r.request_hash for r in plain_hashes} == {None}  # the job's own body was sent


async def run_ids(engine: AsyncEngine, round_id: int) -> dict[str, int]:
    """Run ids of a round by job key."""
    sql = "SELECT r.id, j.key FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.round_id = :r"
    return {row.key: row.id for row in await rows(engine, sql, r=round_id)}


def with_model_hash(body: str, model: str) -> str:
    return request_hash(canonical_json({**json.loads(body), "model": model}))


async def test_endpoint_override_sends_local_jobs_to_another_endpoint_unchanged(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    with fake_server() as server:
        settings = settings_with(db_url, remote("fake", server.base_url))
        sub = await submit_jobs(engine, tmp_path, 2, settings)  # endpoint: local
        await work(engine, settings, [sub.round_id])
        assert server.received == []
        moved = await replay(engine, settings, "t", endpoint="fake")
        await work(engine, settings, [moved.round_id])
    bodies = {r.body for r in await rows(engine, "SELECT body FROM jobs")}
    assert {canonical_json(r.json) for r in server.received} == bodies
    (rnd,) = await rows(engine, "SELECT endpoint, model FROM rounds WHERE number = 2")
    assert (rnd.endpoint, rnd.model) == ("fake", None)
    outputs = await rows(
        engine, "SELECT r.output FROM runs r JOIN rounds ro ON ro.id = r.round_id "
        "WHERE ro.number = 2",
    )  # fmt: skip
    assert all(o.output.startswith("echo: ") for o in outputs)


async def test_selections_jobs_runs_only_failed_only_changed(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    calls: dict[str, int] = {}

    def script(request: Received, count: int) -> Reply:
        text = request.json["messages"][0]["content"]
        calls[text] = calls.get(text, 0) + 1
        if "topic0" in text and calls[text] == 1:  # fails the first time only
            return Reply(400, {"error": {"message": "bad", "type": "invalid_request_error"}})
        body = completion(request.json)
        if "topic1" in text:  # a different answer every time
            body["choices"][0]["message"]["content"] += f" #{calls[text]}"
        return Reply(body=body)

    with fake_server(script) as server:
        settings = settings_with(db_url, remote("fake", server.base_url))
        sub = await submit(engine, yaml_job(tmp_path, 4), settings, endpoint="fake")
        await work(engine, settings, [sub.round_id])

        failed = await replay(engine, settings, "t", Selection(only_failed=True))
        assert (failed.queued, failed.selection) == (1, "only-failed")
        await work(engine, settings, [failed.round_id])
        with pytest.raises(RunnerError, match="no job is failed in its latest finished run"):
            await replay(engine, settings, "t", Selection(only_failed=True))

        # topic1 answers differently each time; topic0's last two runs (2, 3) agree.
        everything = await replay(engine, settings, "t")
        await work(engine, settings, [everything.round_id])
        changed = await replay(engine, settings, "t", Selection(only_changed=True))
        assert (changed.queued, changed.selection) == (1, "only-changed")
        await work(engine, settings, [changed.round_id])

        run_id = (await run_ids(engine, sub.round_id))["topic=topic3"]
        named = await replay(
            engine, settings, "t", Selection(keys=("topic=topic2",), run_ids=(run_id,))
        )
        assert (named.queued, named.selection) == (2, "jobs")
    keys = await rows(
        engine,
        "SELECT ro.number, j.key FROM runs r JOIN jobs j ON j.id = r.job_id "
        "JOIN rounds ro ON ro.id = r.round_id WHERE ro.number IN (2, 4, 5) ORDER BY 1, 2",
    )
    assert [tuple(k) for k in keys] == [
        (2, "topic=topic0"),  # failed in round 1
        (4, "topic=topic1"),  # answers differently each time
        (5, "topic=topic2"),
        (5, "topic=topic3"),
    ]


async def test_bad_replays_fail_with_a_clear_error_and_write_nothing(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = settings_with(db_url)
    sub = await submit_jobs(engine, tmp_path, 2, settings)
    other = await submit_jobs(engine, tmp_path, 1, settings, name="other")
    other_run = (await run_ids(engine, other.round_id))["topic=topic0"]
    with pytest.raises(NotFoundError, match="no batch 'nope'"):
        await replay(engine, settings, "nope")
    with pytest.raises(NotFoundError, match="no job 'missing' in batch 't'"):
        await replay(engine, settings, "t", Selection(keys=("topic=topic0", "missing")))
    with pytest.raises(NotFoundError, match=f"no run {other_run} in batch 't'"):
        await replay(engine, settings, "t", Selection(run_ids=(other_run,)))
    with pytest.raises(ConfigError, match="unknown endpoint 'nowhere'"):
        await replay(engine, settings, "t", endpoint="nowhere")
    with pytest.raises(RunnerError, match="--model must name a model"):
        await replay(engine, settings, "t", model=" ")
    with pytest.raises(RunnerError, match="nothing to replay"):
        await replay(engine, settings, str(sub.batch_id), Selection(only_changed=True))
    assert await scalar(engine, "SELECT count(*) FROM rounds") == 2
    assert await scalar(engine, "SELECT count(*) FROM runs") == 3


async def test_reuse_copies_stored_results_instead_of_sending_and_only_when_asked(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    with fake_server() as server:
        settings = settings_with(db_url, remote("fake", server.base_url))
        sub = await submit(engine, yaml_job(tmp_path, 3), settings, endpoint="fake")
        await work(engine, settings, [sub.round_id])
        assert len(server.received) == 3
        reused = await replay(engine, settings, "t", reuse=True)
        assert (reused.queued, reused.reused) == (0, 3)
        await work(engine, settings, [reused.round_id])
        assert len(server.received) == 3  # nothing sent
        again = await replay(engine, settings, "t", reuse=True)  # copies of copies
        elsewhere = await replay(engine, settings, "t", reuse=True, endpoint="local")
        other_model = await replay(engine, settings, "t", reuse=True, model="other")
        not_asked = await replay(engine, settings, "t")
    assert (again.reused, elsewhere.reused, other_model.reused, not_asked.reused) == (3, 0, 0, 0)
    runs = await rows(
        engine,
        "SELECT ro.number, ro.reuse, r.state, r.attempts, r.reused_from_run_id, r.output, "
        "r.system_fingerprint, r.response_model, j.key FROM runs r JOIN jobs j ON j.id = r.job_id "
        "JOIN rounds ro ON ro.id = r.round_id ORDER BY ro.number, j.key",
    )
    originals = {r.key: r for r in runs if r.number == 1}
    first_ids = await run_ids(engine, sub.round_id)
    for run in runs:
        if run.number in (2, 3):
            assert run.reuse and run.state == "succeeded" and run.attempts == 0
            assert run.reused_from_run_id == first_ids[run.key]  # the run that made the request
            assert run.output == originals[run.key].output
            assert run.response_model == originals[run.key].response_model
        elif run.number > 3:
            assert run.state == "queued" and run.reused_from_run_id is None
    assert await scalar(engine, "SELECT count(*) FROM attempts") == 3


def test_cli_replay_work_and_run_reuse(db_url: str, tmp_path: Path) -> None:
    path = yaml_job(tmp_path, 3)
    code, out, _ = invoke(db_url, "run", str(path))
    assert code == 0, out
    code, out, err = invoke(db_url, "replay", "t", "--job", "topic=topic1", "--work")
    assert code == 0, err
    assert out.splitlines()[0] == "batch 1 (t): round 2 (replay of jobs): 1 runs queued"
    assert "round 2 (replay): 1/1 done: 1 succeeded" in out
    code, out, err = invoke(db_url, "run", "--reuse", "--name", "again", str(path))
    assert code == 0, err
    assert "3 runs reused stored results of identical requests" in out
    assert "round 1 (submit): 3/3 done: 3 succeeded" in out
    code, out, _ = invoke(db_url, "show", "again", "topic=topic0")
    assert code == 0 and "reused the stored result of run 1 (--reuse)" in out

    # `runner show` says what a run sent: the round's overrides applied.
    code, _, err = invoke(db_url, "replay", "t", "--model", "other-model", "--work")
    assert code == 0, err
    code, out, _ = invoke(db_url, "show", "t", "topic=topic2", "--format", "json")
    shown = json.loads(out)
    assert (shown["round_number"], shown["model"], shown["endpoint"]) == (3, "other-model", "local")
    assert json.loads(shown["body"])["model"] == "other-model"
    assert shown["request_hash"] == request_hash(shown["body"])
    code, out, _ = invoke(db_url, "show", "t", "topic=topic2", "--round", "1", "--format", "json")
    assert json.loads(out)["model"] == "test-model"


def test_cli_replay_errors_are_one_line(db_url: str, tmp_path: Path) -> None:
    write_config(tmp_path)
    assert invoke(db_url, "run", str(yaml_job(tmp_path, 1)))[0] == 0
    for args, message, exit_code in (
        (["replay", "nope"], "error: no batch 'nope'", 1),
        (["replay", "t", "--job", "x"], "error: no job 'x' in batch 't'", 1),
        (["replay", "t", "--run", "99"], "error: no run 99 in batch 't'", 1),
        (
            ["replay", "t", "--endpoint", "nowhere"],
            "error: --endpoint: unknown endpoint 'nowhere'",
            2,
        ),
        (["replay", "t", "--only-failed"], "error: nothing to replay in batch 't'", 1),
    ):
        code, out, err = invoke(db_url, *args)
        assert code == exit_code and err.startswith(message) and len(err.splitlines()) == 1
        assert out == ""
    _, out, _ = invoke(db_url, "status", "t", "--format", "json")
    assert len(json.loads(out)[0]["rounds"]) == 1
