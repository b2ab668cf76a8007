"""Several samples per run (the body's ``n``), on both backends, through the CLI.

``samples: K`` in a job file, ``--samples K`` on replay and on schedules; servers that
ignore ``n`` (llama.cpp answers with one choice) still give K samples, by further
requests, and ``runs.n_honoured`` says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.db.queue import with_changes
from runner.hashing import request_hash
from tests.fakeserver import fake_server
from tests.helpers import sql, yaml_job
from tests.replaykit import invoke, remote, write_config

RUNS = (
    "SELECT ro.number, ro.samples, j.body, r.request_hash, r.state, r.outputs, r.n_honoured, "
    "r.total_tokens FROM runs r JOIN jobs j ON j.id = r.job_id "
    "JOIN rounds ro ON ro.id = r.round_id ORDER BY ro.number, j.key"
)


def runs(db_url: str, number: int) -> list[tuple[object, ...]]:
    return [row[1:] for row in sql(db_url, RUNS) if row[0] == number]


def test_samples_in_a_job_file_and_on_replay_set_n_and_store_every_sample(
    db_url: str, tmp_path: Path
) -> None:
    write_config(tmp_path)
    path = yaml_job(tmp_path, 3, extra="samples: 3\n")
    code, out, err = invoke(db_url, "run", str(path))
    assert code == 0, err
    first = runs(db_url, 1)
    assert len(first) == 3
    for samples, body, sent_hash, state, outputs, honoured, _ in first:
        assert (samples, sent_hash, state, honoured) == (None, None, "succeeded", True)
        assert json.loads(str(body))["n"] == 3
        assert len(json.loads(str(outputs))) == 3
    code, out, err = invoke(db_url, "replay", "t", "--samples", "5", "--work")
    assert code == 0, err
    assert "(replay of all, samples 5): 3 runs queued" in out
    for samples, body, sent_hash, state, outputs, honoured, _ in runs(db_url, 2):
        assert (samples, state, honoured) == (5, "succeeded", True)
        assert sent_hash == request_hash(with_changes(str(body), samples=5))
        assert len(json.loads(str(outputs))) == 5
    # One sample: n leaves the body, and n_honoured says nothing.
    assert invoke(db_url, "replay", "t", "--samples", "1", "--work")[0] == 0
    for samples, body, sent_hash, _, outputs, honoured, _ in runs(db_url, 3):
        assert (samples, honoured) == (1, None)
        assert "n" not in json.loads(with_changes(str(body), samples=1))
        assert sent_hash == request_hash(with_changes(str(body), samples=1))
        assert len(json.loads(str(outputs))) == 1
    # The run's details show the body that was sent.
    code, out, _ = invoke(db_url, "show", "t", "topic=topic0", "--round", "2", "--format", "json")
    assert code == 0 and json.loads(json.loads(out)["body"])["n"] == 5


def test_an_endpoint_that_ignores_n_still_yields_every_sample(db_url: str, tmp_path: Path) -> None:
    with fake_server() as server:  # one choice whatever n says, like llama.cpp's server
        write_config(tmp_path, remote("fake", server.base_url))
        path = yaml_job(tmp_path, 2, extra="samples: 3\n")
        code, _, err = invoke(db_url, "run", "--endpoint", "fake", str(path))
        assert code == 0, err
    asked = sorted((r.json["messages"][0]["content"], r.json.get("n", 1)) for r in server.received)
    assert asked == [(f"Tell me about topic{i}.", n) for i in range(2) for n in (1, 2, 3)]
    for _, _, _, state, outputs, honoured, total_tokens in runs(db_url, 1):
        assert (state, honoured, total_tokens) == ("succeeded", False, 3 * 12)
        assert len(json.loads(str(outputs))) == 3


def test_schedule_rounds_ask_for_the_schedules_samples(db_url: str, tmp_path: Path) -> None:
    write_config(tmp_path)
    assert invoke(db_url, "run", str(yaml_job(tmp_path, 2)))[0] == 0
    code, out, err = invoke(
        db_url, "schedule", "add", "nightly", "t", "--cron", "0 3 * * *", "--samples", "4"
    )
    assert code == 0, err
    assert ", 4 samples per job; next tick" in out
    listed = json.loads(invoke(db_url, "schedule", "list", "--format", "json")[1])
    assert [s["samples"] for s in listed] == [4]
    code, _, err = invoke(db_url, "schedule", "run-due", "--now", "2031-01-10T03:00:00Z", "--work")
    assert code == 0, err
    for samples, body, sent_hash, state, outputs, honoured, _ in runs(db_url, 2):
        assert (samples, state, honoured) == (4, "succeeded", True)
        assert sent_hash == request_hash(with_changes(str(body), samples=4))
        assert len(json.loads(str(outputs))) == 4


BAD_FILES = [
    ("samples: 0\n", "t.yaml:7: samples: must be an integer from 1 to 128, got 0"),
    ("samples: two\n", "t.yaml:7: samples: must be an integer from 1 to 128, got 'two'"),
    ("samples: 129\n", "t.yaml:7: samples: must be an integer from 1 to 128, got 129"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_FILES)
def test_bad_samples_in_a_job_file_name_the_line_and_store_nothing(
    db_url: str, tmp_path: Path, extra: str, message: str
) -> None:
    write_config(tmp_path)
    code, _, err = invoke(db_url, "submit", str(yaml_job(tmp_path, 2, extra=extra)))
    assert code == 2 and err.strip().endswith(message), err
    assert sql(db_url, "SELECT count(*) FROM jobs") == [(0,)]


def test_samples_and_params_n_together_and_bad_flags_are_refused(
    db_url: str, tmp_path: Path
) -> None:
    write_config(tmp_path)
    path = tmp_path / "both.yaml"
    path.write_text(
        "model: m\nmessages: [{role: user, content: hi}]\nparams: {n: 2}\nsamples: 3\n",
        encoding="utf-8",
    )
    code, _, err = invoke(db_url, "submit", str(path))
    assert (code, err.strip()) == (
        2,
        f"error: {path}:4: samples: samples and params.n say the same thing: keep one",
    )
    assert invoke(db_url, "run", str(yaml_job(tmp_path, 1)))[0] == 0
    for args in (["replay", "t"], ["schedule", "add", "s", "t", "--cron", "0 3 * * *"]):
        code, _, err = invoke(db_url, *args, "--samples", "0")
        assert code == 2 and "Invalid value for '--samples': 0 is not in the range" in err
    assert sql(db_url, "SELECT count(*) FROM rounds") == [(1,)]
    assert sql(db_url, "SELECT count(*) FROM schedules") == [(0,)]


def test_verify_with_samples_reports_distinct_samples_and_an_ignored_n(
    db_url: str, tmp_path: Path
) -> None:
    with fake_server() as server:  # one choice whatever n says, like llama.cpp's server
        write_config(tmp_path, remote("fake", server.base_url))
        path = yaml_job(tmp_path, 2)
        assert invoke(db_url, "run", "--endpoint", "fake", str(path))[0] == 0
        code, _, err = invoke(db_url, "verify", str(path), "--samples", "3")
        assert code == 2
        assert err.strip() == (
            f"error: --samples applies to a batch: write samples: 3 in {path}, "
            "or verify the submitted batch with --samples"
        )
        assert sql(db_url, "SELECT count(*) FROM rounds") == [(1,)]
        code, out, err = invoke(db_url, "verify", "t", "-k", "2", "--samples", "3")
        assert code == 0, err
        assert "distinct samples" in out and "n honoured" in out
        code, out, err = invoke(
            db_url, "verify", "t", "-k", "2", "--samples", "3", "--format", "json"
        )
        assert code == 0, err
    jobs = json.loads(out)["jobs"]
    assert len(jobs) == 2
    for job in jobs:
        # The fake server echoes the prompt and seed: the same text every time.
        assert (job["samples"], job["distinct_samples"], job["n_honoured"]) == (6, 1, False)
        assert job["diverges_at"] is None
    assert sql(db_url, "SELECT DISTINCT samples FROM rounds WHERE number > 1") == [(3,)]
