"""Compare and diff on both backends: changed backends, null fingerprints, gates, storage.

The "changed backend" is the real thing a user would run: ``runner serve --variant v2``
(here ``running_server``) behind an OpenAI-type endpoint, reached over HTTP.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.analysis.compare import EmbeddingOptions, compare
from runner.analysis.diff import diff_job
from runner.config import EndpointConfig
from runner.db.models import FingerprintGroup
from runner.errors import NotFoundError, RunnerError
from runner.localmodel.server import ServerOptions, running_server
from runner.replay import replay
from runner.submit import submit
from tests.fakeserver import Received, Reply, completion, fake_server
from tests.helpers import rows, scalar, submit_jobs, yaml_job
from tests.replaykit import invoke, remote, settings_with, work, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def v2_url() -> Iterator[str]:
    """The local model's "v2" variant over real HTTP: a backend that was updated."""
    with running_server(ServerOptions(port=0, variant="v2", log_level="warning")) as url:
        yield url


async def test_replay_on_a_changed_backend_reports_the_fingerprint_change(
    engine: AsyncEngine, db_url: str, tmp_path: Path, v2_url: str
) -> None:
    settings = settings_with(db_url, remote("v2", v2_url))
    sub = await submit_jobs(engine, tmp_path, 8, settings)
    await work(engine, settings, [sub.round_id])
    moved = await replay(engine, settings, "t", endpoint="v2")
    await work(engine, settings, [moved.round_id])

    report = await compare(engine, settings, "t")
    s = report.summary
    assert (report.a.number, report.b.number, report.b.endpoint) == (1, 2, "v2")
    assert s.by_fingerprint[FingerprintGroup.CHANGED].jobs == 8
    assert s.by_fingerprint[FingerprintGroup.SAME].jobs == 0
    assert s.by_fingerprint[FingerprintGroup.UNKNOWN].jobs == 0
    (fp_a,), (fp_b,) = s.fingerprints_a, s.fingerprints_b
    assert fp_a != fp_b and fp_a.startswith("fp_") and fp_b.startswith("fp_")
    assert s.exact_match_rate < 1.0 and s.overall.mean_similarity is not None
    assert all(item.same_request for item in report.items)  # the same bodies, elsewhere
    # Stored and queryable by SQL.
    (stored,) = await rows(engine, "SELECT * FROM comparisons")
    assert (stored.id, stored.matched, stored.fingerprint_changed) == (report.id, 8, 8)
    assert stored.exact_match_rate == s.exact_match_rate
    groups = await rows(
        engine,
        "SELECT fingerprint, count(*) AS n FROM comparison_items WHERE comparison_id = :c "
        "GROUP BY fingerprint",
        c=report.id,
    )
    assert [tuple(g) for g in groups] == [("changed", 8)]


def test_cli_compare_says_so_and_fail_under_gates_on_it(
    db_url: str, tmp_path: Path, v2_url: str
) -> None:
    write_config(tmp_path, remote("v2", v2_url))
    assert invoke(db_url, "run", str(yaml_job(tmp_path, 4)))[0] == 0
    code, _, err = invoke(db_url, "replay", "t", "--work")
    assert code == 0, err
    code, out, err = invoke(db_url, "compare", "t", "--fail-under", "100%")
    assert code == 0, err  # a seeded replay on the same backend reproduces everything
    assert "exact matches  4/4 (100.0%)" in out and err == ""

    code, _, err = invoke(db_url, "replay", "t", "--endpoint", "v2", "--work")
    assert code == 0, err
    code, out, err = invoke(db_url, "compare", "t", "--format", "json", "--fail-under", "0.9")
    assert code == 1
    assert err.startswith("exact-match rate ") and "is under --fail-under 90.0%" in err
    document = json.loads(out)
    assert (document["a"]["round"], document["b"]["round"]) == (2, 3)
    assert document["b"]["endpoint_override"] == "v2"
    assert document["summary"]["by_fingerprint"]["changed"]["jobs"] == 4
    assert {i["fingerprint"] for i in document["items"]} == {"changed"}
    code, out, _ = invoke(db_url, "compare", "t", "--fail-under", "0")
    assert code == 0
    assert "changed          4" in out and "comparison 3" in out

    code, out, _ = invoke(db_url, "compare", "t", "--rounds", "1", "2", "--format", "csv")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == 4 and {r["exact_match"] for r in table} == {"True"}
    assert {r["fingerprint"] for r in table} == {"same"}
    code, out, _ = invoke(db_url, "status", "t")
    assert "round 3 (replay, endpoint v2): 4/4 done: 4 succeeded" in out
    code, out, _ = invoke(db_url, "status", "t", "--format", "json")
    assert [r["endpoint"] for r in json.loads(out)[0]["rounds"]] == [None, None, "v2"]


async def test_null_fingerprints_are_compared_and_counted_as_unknown(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    with fake_server() as server:  # answers with "system_fingerprint": null
        settings = settings_with(db_url, remote("fake", server.base_url))
        sub = await submit(engine, yaml_job(tmp_path, 3), settings, endpoint="fake")
        await work(engine, settings, [sub.round_id])
        again = await replay(engine, settings, "t")
        await work(engine, settings, [again.round_id])
    assert await scalar(engine, "SELECT count(*) FROM runs WHERE system_fingerprint IS NULL") == 6
    report = await compare(engine, settings, "t")
    s = report.summary
    assert s.by_fingerprint[FingerprintGroup.UNKNOWN].jobs == 3
    assert s.by_fingerprint[FingerprintGroup.UNKNOWN].exact == 3
    assert s.by_fingerprint[FingerprintGroup.SAME].jobs == 0
    assert s.fingerprints_a == s.fingerprints_b == {"null": 3}
    assert s.exact_match_rate == 1.0
    assert await scalar(engine, "SELECT fingerprint_unknown FROM comparisons") == 3


async def test_failures_on_one_side_two_batches_and_embeddings(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    def script(request: Received, count: int) -> Reply:
        if "topic0" in request.json["messages"][0]["content"] and count <= 2:
            return Reply(400, {"error": {"message": "nope", "type": "invalid_request_error"}})
        return Reply(body=completion(request.json, fingerprint="fp_fake"))

    with fake_server(script) as server:
        settings = settings_with(db_url, remote("fake", server.base_url))
        sub = await submit(engine, yaml_job(tmp_path, 2), settings, endpoint="fake")
        await work(engine, settings, [sub.round_id])
        again = await replay(engine, settings, "t")
        await work(engine, settings, [again.round_id])
    report = await compare(engine, settings, "t")
    s = report.summary
    assert (s.failed_a, s.failed_b, s.failed_one_side) == (1, 0, 1)
    assert (s.overall.exact, s.exact_match_rate) == (1, 0.5)
    assert s.by_fingerprint[FingerprintGroup.SAME].jobs == 1  # failures sit in no group
    (failed,) = report.changed_most
    assert failed.key == "topic=topic0" and failed.a.error_type == "invalid_request_error"

    # Two batches from the same file, matched by key; the local model embeds the outputs.
    local = settings_with(db_url)
    one = await submit_jobs(engine, tmp_path, 3, local, name="one")
    two = await submit_jobs(engine, tmp_path, 4, local, name="two")
    await work(engine, local, [one.round_id, two.round_id])
    cross = await compare(engine, local, "one", "two", embeddings=EmbeddingOptions())
    c = cross.summary
    assert (c.matched, c.only_a, c.only_b, c.overall.exact) == (3, 0, 1, 3)
    assert (cross.a.batch_name, cross.b.batch_name) == ("one", "two")
    assert cross.embeddings_endpoint == "local"
    assert all(i.embedding_distance == pytest.approx(0.0, abs=1e-6) for i in cross.items)


async def test_embedding_distance_grows_when_outputs_change(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = settings_with(db_url, EndpointConfig(name="local-v2", type="local", variant="v2"))
    sub = await submit_jobs(engine, tmp_path, 3, settings)
    await work(engine, settings, [sub.round_id])
    moved = await replay(engine, settings, "t", endpoint="local-v2")
    await work(engine, settings, [moved.round_id])
    report = await compare(
        engine, settings, "t", embeddings=EmbeddingOptions(endpoint="local", model="any")
    )
    distances = [i.embedding_distance for i in report.items]
    assert all(d is not None and 0.0 < d <= 1.0 for d in distances)
    assert report.summary.overall.mean_embedding_distance == pytest.approx(
        sum(d for d in distances if d is not None) / 3
    )
    stored = await rows(engine, "SELECT embedding_distance FROM comparison_items ORDER BY key")
    assert [r.embedding_distance for r in stored] == pytest.approx(
        [i.embedding_distance for i in sorted(report.items, key=lambda i: i.key)]
    )
    with pytest.raises(RunnerError, match="endpoint 'nowhere'"):
        await compare(engine, settings, "t", embeddings=EmbeddingOptions(endpoint="nowhere"))
    assert await scalar(engine, "SELECT count(*) FROM comparisons") == 1


async def test_diff_shows_words_that_changed(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = settings_with(db_url, EndpointConfig(name="local-v2", type="local", variant="v2"))
    sub = await submit_jobs(engine, tmp_path, 2, settings)
    await work(engine, settings, [sub.round_id])
    same = await replay(engine, settings, "t")
    await work(engine, settings, [same.round_id])
    identical = await diff_job(engine, "t", "topic=topic1")
    assert identical.identical and (identical.a.number, identical.b.number) == (1, 2)
    moved = await replay(engine, settings, "t", endpoint="local-v2")
    await work(engine, settings, [moved.round_id])
    changed = await diff_job(engine, "t", "topic=topic1", (1, 3))
    assert not changed.identical and changed.divergence_offset is not None
    assert "".join(p.text for p in changed.pieces if p.op != "insert") == changed.run_a.text
    assert "".join(p.text for p in changed.pieces if p.op != "delete") == changed.run_b.text
    with pytest.raises(NotFoundError, match="no job 'nope' in batch 't'"):
        await diff_job(engine, "t", "nope")
    with pytest.raises(NotFoundError, match="has no round 9"):
        await diff_job(engine, "t", "topic=topic1", (1, 9))


def test_cli_diff(db_url: str, tmp_path: Path) -> None:
    write_config(tmp_path, EndpointConfig(name="local-v2", type="local", variant="v2"))
    assert invoke(db_url, "run", str(yaml_job(tmp_path, 1)))[0] == 0
    code, _, err = invoke(db_url, "diff", "t", "topic=topic0")
    assert code == 1 and err.startswith("error: job 'topic=topic0' of batch 't' has 1 finished")
    assert invoke(db_url, "replay", "t", "--work")[0] == 0
    code, out, _ = invoke(db_url, "diff", "t", "topic=topic0")
    assert code == 0 and "identical outputs" in out and "round 1 -> round 2" in out
    assert invoke(db_url, "replay", "t", "--endpoint", "local-v2", "--work")[0] == 0
    code, out, _ = invoke(db_url, "diff", "t", "topic=topic0")
    assert code == 0 and "round 2 -> round 3" in out and "first divergence at character" in out
    assert "[-" in out and "{+" in out


def test_cli_compare_errors_are_one_line_and_store_nothing(db_url: str, tmp_path: Path) -> None:
    assert invoke(db_url, "run", str(yaml_job(tmp_path, 2)))[0] == 0
    code, _, err = invoke(db_url, "compare", "t")
    assert code == 1
    assert err == "error: batch 't' (id 1) has 1 finished round(s), compare needs 2; replay it " \
        "with `runner replay 1 --work`\n"  # fmt: skip
    assert invoke(db_url, "replay", "t")[0] == 0  # queued, not worked
    for args, message in (
        (["compare", "nope"], "error: no batch 'nope'"),
        (["compare", "t"], "round 2 is not finished yet: `runner work --burst`"),
        (["compare", "t", "--rounds", "1", "2"], "error: round 2 of batch 't' is not finished"),
        (["compare", "t", "--rounds", "1", "7"], "error: batch 't' (id 1) has no round 7"),
        (["compare", "t", "--rounds", "1", "1"], "compare two different rounds"),
        (["diff", "t", "topic=topic0", "--rounds", "1", "2"], "is queued, not finished"),
    ):
        code, out, err = invoke(db_url, *args)
        assert code == 1 and message in err and len(err.splitlines()) == 1 and out == ""
    code, _, err = invoke(db_url, "compare", "t", "--format", "xml")
    assert code == 2 and "'xml' is not one of 'table', 'json', 'csv'" in err
    code, _, err = invoke(db_url, "compare", "t", "--fail-under", "lots")
    assert code == 2 and "'lots' is not a rate: give 0.95 or 95%" in err
    code, _, err = invoke(db_url, "compare", "t", "--rounds", "1")
    assert code == 2 and "requires 2 arguments" in err

    assert invoke(db_url, "work", "--burst")[0] == 0
    other = tmp_path / "other.yaml"
    other.write_text(
        "name: other\nmodel: m\nmessages: [{role: user, content: 'hi {x}'}]\nvars: {x: [a]}\n"
    )
    assert invoke(db_url, "run", str(other))[0] == 0
    code, _, err = invoke(db_url, "compare", "t", "other")
    assert code == 1 and "have no job key in common: nothing to compare" in err
    code, _, err = invoke(db_url, "compare", "t", "--embeddings-endpoint", "nowhere")
    assert code == 2 and "unknown endpoint 'nowhere'" in err
    code, out, _ = invoke(db_url, "compare", "t", "--format", "json")
    assert json.loads(out)["comparison_id"] == 1  # nothing was stored by the failures
