"""The same job file run or submitted again, summaries' cost, and `work --burst`'s exit
code, through the CLI on both backends (a new user's first steps, issue 14)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from runner.cli import main
from runner.db import engine as db
from runner.db import queue
from runner.db.types import utcnow
from tests.fakeserver import FakeServer, Reply, completion, fake_server
from tests.helpers import yaml_job
from tests.sqlkit import sync_engine


def sync_rows(db_url: str, query: str) -> list[tuple[object, ...]]:
    with sync_engine(db_url) as engine, engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(query))]


def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def batches(db_url: str) -> list[tuple[int, str]]:
    return [
        (int(i), str(n)) for i, n in sync_rows(db_url, "SELECT id, name FROM batches ORDER BY id")
    ]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeServer]:
    """A fake endpoint ``fake`` in ./runner.toml: answers, but 400 about topic1."""

    def script(req: object, n: int) -> Reply:
        body = req.json  # type: ignore[attr-defined]
        if "topic1" in body["messages"][-1]["content"]:
            return Reply(400, {"error": {"message": "bad request", "type": "invalid_request"}})
        return Reply(body=completion(body))

    with fake_server(script) as server:
        (tmp_path / "runner.toml").write_text(
            f'[endpoints.fake]\ntype = "openai"\nbase_url = "{server.base_url}"\ntimeout = 5\n'
        )
        yield server


def test_run_again_resumes_the_unfinished_batch(db_url: str, tmp_path: Path) -> None:
    job = str(yaml_job(tmp_path, 3))
    assert cli(db_url, "submit", job)[0] == 0
    code, out, _ = cli(db_url, "submit", job)
    assert code == 0, out
    assert out.strip() == (
        "batch 1 (t) round 1 (3 of 3 runs left) is already queued, nothing new queued: "
        "`runner work` runs it (--again submits the file as a new batch)"
    )
    code, out, err = cli(db_url, "run", "-q", job)
    assert code == 0, out + err
    assert out.startswith("resuming batch 1 (t) round 1 (3 of 3 runs left)")
    assert "round 1 (submit): 3/3 done: 3 succeeded" in out
    assert batches(db_url) == [(1, "t")]
    assert sync_rows(db_url, "SELECT count(*) FROM runs")[0][0] == 3


def test_a_finished_file_is_refused_unless_again(db_url: str, tmp_path: Path) -> None:
    job = str(yaml_job(tmp_path, 2))
    assert cli(db_url, "run", "-q", job)[0] == 0
    for command in ("run", "submit"):
        code, out, err = cli(db_url, command, job)
        assert code == 3 and out == "", out
        assert err.strip() == (
            f"error: {job} already ran as batch 1 (t): round 1 finished (2 succeeded); "
            "see `runner status 1`, or give --again to submit it as a new batch"
        )
    assert batches(db_url) == [(1, "t")]
    code, out, _ = cli(db_url, "run", "-q", "--again", job)
    assert code == 0 and "batch 2 (t): 2 jobs queued as round 1" in out
    # Another name or endpoint is another submission, not the same one again.
    assert cli(db_url, "submit", "--name", "other", job)[0] == 0
    assert cli(db_url, "submit", "--endpoint", "openai", job)[0] == 0
    # The same endpoint the file names is the same submission.
    assert cli(db_url, "submit", "--endpoint", "local", job)[0] == 3
    # Other bytes are another file.
    (tmp_path / "t.yaml").write_text(Path(job).read_text() + "# edited\n")
    assert cli(db_url, "submit", job)[0] == 0
    assert batches(db_url) == [(1, "t"), (2, "t"), (3, "other"), (4, "t"), (5, "t")]


def test_a_batch_that_ended_with_failures_points_to_retry(
    db_url: str, tmp_path: Path, fake: FakeServer
) -> None:
    job = str(yaml_job(tmp_path, 2))
    code, out, err = cli(db_url, "run", "-q", "--endpoint", "fake", job)
    assert code == 1 and "1 succeeded, 1 failed" in out.replace("done: ", ""), out + err
    code, _, err = cli(db_url, "run", "--endpoint", "fake", job)
    assert code == 3
    assert "already ran as batch 1 (t): round 1 finished (1 succeeded, 1 failed)" in err
    assert "`runner retry 1 --failed` queues those again" in err
    assert len(fake.received) == 2


def test_run_again_takes_back_runs_a_killed_worker_left_running(
    db_url: str, tmp_path: Path
) -> None:
    job = str(yaml_job(tmp_path, 4))
    assert cli(db_url, "submit", job)[0] == 0

    async def claim_and_die() -> int:
        """A worker claims two runs and dies (kill -9): they stay running, leased."""
        engine = db.create_engine_async(db_url)
        try:
            lease = timedelta(seconds=1)
            return len(await queue.claim(engine, "dead", 2, lease=lease, now=utcnow()))
        finally:
            await engine.dispose()

    assert anyio.run(claim_and_die) == 2
    code, out, err = cli(db_url, "run", "-q", job)
    assert code == 0, out + err
    assert re.search(r"^2 runs (are held by another worker|were left running)", out, re.M), out
    assert "round 1 (submit): 4/4 done: 4 succeeded" in out
    assert batches(db_url) == [(1, "t")]


def test_run_and_replay_summaries_show_the_configured_cost(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "runner.toml").write_text('[prices."test-model"]\ninput = 1.0\noutput = 2.0\n')
    code, out, _ = cli(db_url, "run", "-q", str(yaml_job(tmp_path, 2)))
    assert code == 0 and re.search(r"cost: \$\d", out) and "cost: unknown" not in out, out
    code, out, _ = cli(db_url, "replay", "t", "--work")
    assert code == 0 and "round 2 (replay)" in out, out
    assert len(re.findall(r"cost: \$\d", out)) == 2 and "cost: unknown" not in out, out


def test_work_burst_exits_1_when_runs_failed(db_url: str, tmp_path: Path, fake: FakeServer) -> None:
    job = yaml_job(tmp_path, 2)
    assert cli(db_url, "submit", "--endpoint", "fake", str(job))[0] == 0
    code, out, err = cli(db_url, "work", "--burst", "-q")
    assert code == 1, out + err
    assert "1 succeeded, 1 failed" in out and "1 runs failed" in err
    assert (
        cli(db_url, "submit", "--endpoint", "fake", str(yaml_job(tmp_path, 1, name="ok")))[0] == 0
    )
    code, out, _ = cli(db_url, "work", "--burst", "-q")
    assert code == 0 and "1 succeeded, 0 failed" in out


def test_verify_of_a_file_that_ran_queues_a_batch_of_its_own(db_url: str, tmp_path: Path) -> None:
    job = str(yaml_job(tmp_path, 2))
    assert cli(db_url, "run", "-q", job)[0] == 0
    code, out, err = cli(db_url, "verify", job, "--times", "2")
    assert code == 0, out + err
    assert batches(db_url) == [(1, "t"), (2, "t")]
