"""The pure measures of compare, diff and verify, and replay's body rewrite: no I/O."""

from __future__ import annotations

import json
from types import SimpleNamespace

import click
import pytest

from runner.analysis.compare import Result, changed_most, compare_pair, fingerprint_group, summarize
from runner.analysis.similarity import (
    DiffOp,
    DiffPiece,
    cosine_distance,
    divergence_offset,
    mean_pairwise_similarity,
    similarity,
    word_diff,
)
from runner.analysis.verify import group, judge
from runner.cli.replaying import _rate
from runner.db.models import FingerprintGroup
from runner.db.queue import sent_request, with_model
from runner.hashing import canonical_json, request_hash
from runner.replay import Selection


def test_similarity_is_a_normalised_edit_distance() -> None:
    assert similarity("same text", "same text") == 1.0
    assert similarity("abcd", "abce") == pytest.approx(0.75)  # 1 edit over 4 characters
    assert similarity("", "") == 1.0
    assert similarity("abc", "") == 0.0
    assert similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)


def test_divergence_offset() -> None:
    assert divergence_offset("The red planet", "The red planet") is None
    assert divergence_offset("The red planet", "The blue planet") == 4
    assert divergence_offset("Mars", "Mars is red") == 4  # a prefix: the shorter length
    assert divergence_offset("x", "y") == 0


def test_word_diff_rebuilds_both_texts() -> None:
    a = "The rover landed on Mars  in 2021.\nIt drives slowly."
    b = "The lander touched down on Mars in 2021.\nIt drives slowly!"
    pieces = word_diff(a, b)
    old = "".join(p.text for p in pieces if p.op is not DiffOp.INSERT)
    new = "".join(p.text for p in pieces if p.op is not DiffOp.DELETE)
    assert (old, new) == (a, b)
    assert any(p.op is DiffOp.DELETE and "rover" in p.text for p in pieces)
    assert any(p.op is DiffOp.INSERT and "lander" in p.text for p in pieces)
    assert word_diff("same", "same") == [DiffPiece(DiffOp.EQUAL, "same")]


def test_mean_pairwise_similarity_and_cosine_distance() -> None:
    assert mean_pairwise_similarity(["a"]) is None
    assert mean_pairwise_similarity(["abc", "abc", "abc"]) == 1.0
    # pairs: (abcd, abcd)=1, (abcd, abce)=.75, (abcd, abce)=.75
    assert mean_pairwise_similarity(["abcd", "abcd", "abce"]) == pytest.approx(2.5 / 3)
    assert cosine_distance([1.0, 0.0], [2.0, 0.0]) == pytest.approx(0.0)
    assert cosine_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert cosine_distance([0.0, 0.0], [0.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="different lengths"):
        cosine_distance([1.0], [1.0, 2.0])


def result(run_id: int, output: str | None = "hello world", **kw: object) -> Result:
    values: dict[str, object] = {
        "run_id": run_id,
        "job_id": 1,
        "key": "k",
        "state": "succeeded",
        "output": output,
        "outputs": (output,),
        "fingerprint": "fp_a",
        "response_model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "sent_hash": "v1:h",
        "sent_endpoint": "local",
    }
    values.update(kw)
    return Result(**values)  # type: ignore[arg-type]


def test_fingerprint_groups_and_null_is_unknown() -> None:
    assert fingerprint_group("fp_a", "fp_a") is FingerprintGroup.SAME
    assert fingerprint_group("fp_a", "fp_b") is FingerprintGroup.CHANGED
    assert fingerprint_group(None, "fp_b") is FingerprintGroup.UNKNOWN
    assert fingerprint_group(None, None) is FingerprintGroup.UNKNOWN


def test_compare_pair_measures_every_difference() -> None:
    same = compare_pair(result(1), result(2))
    assert same.exact_match and same.similarity == 1.0 and same.divergence_offset is None
    assert same.fingerprint is FingerprintGroup.SAME and same.same_model and same.same_request
    assert (same.prompt_tokens_delta, same.completion_tokens_delta) == (0, 0)

    changed = compare_pair(
        result(1),
        result(2, "hello there", fingerprint="fp_b", response_model="m2", completion_tokens=25,
               sent_hash="v1:other"),
    )  # fmt: skip
    assert not changed.exact_match and changed.divergence_offset == 6
    assert changed.similarity == pytest.approx(similarity("hello world", "hello there"))
    assert changed.fingerprint is FingerprintGroup.CHANGED
    assert changed.same_model is False and changed.same_request is False
    assert changed.completion_tokens_delta == 5

    failed = compare_pair(result(1), result(2, None, state="failed", outputs=(), fingerprint=None))
    assert not failed.exact_match and failed.failed_one_side
    assert failed.similarity is None and failed.fingerprint is None and failed.same_model is None

    # n > 1: the first choice is equal but another is not -> not an exact match
    multi = compare_pair(result(1, outputs=("a", "b")), result(2, outputs=("a", "c")))
    assert not multi.exact_match and multi.similarity == 1.0


def test_summary_splits_by_fingerprint_and_counts_failures() -> None:
    items = [
        compare_pair(result(1, key="s1"), result(2, key="s1")),
        compare_pair(result(3, key="c1"), result(4, "bye world", key="c1", fingerprint="fp_b")),
        compare_pair(result(5, key="u1", fingerprint=None), result(6, key="u1", fingerprint=None)),
        compare_pair(result(7, key="f1"), result(8, None, key="f1", state="failed", outputs=())),
    ]
    s = summarize(items, only_a=1, only_b=0)
    assert (s.matched, s.only_a, s.only_b) == (4, 1, 0)
    assert s.overall.exact == 2 and s.exact_match_rate == 0.5  # the failure counts against
    assert s.by_fingerprint[FingerprintGroup.SAME].jobs == 1
    assert s.by_fingerprint[FingerprintGroup.CHANGED].jobs == 1
    assert s.by_fingerprint[FingerprintGroup.CHANGED].exact_rate == 0.0
    assert s.by_fingerprint[FingerprintGroup.UNKNOWN].jobs == 1
    assert s.by_fingerprint[FingerprintGroup.UNKNOWN].exact == 1
    assert (s.failed_a, s.failed_b, s.failed_one_side) == (0, 1, 1)
    assert s.fingerprints_a == {"fp_a": 3, "null": 1}
    assert s.fingerprints_b == {"fp_a": 1, "fp_b": 1, "null": 1}
    assert s.overall.min_similarity == pytest.approx(similarity("hello world", "bye world"))
    assert [i.key for i in changed_most(items, 5)] == ["f1", "c1"]  # failures first
    assert changed_most(items, 1)[0].key == "f1"


def test_with_model_changes_only_the_model() -> None:
    body = canonical_json(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hé {x}"}],
         "seed": 7, "temperature": 0.7, "top_p": 1e-05, "max_tokens": 60},
    )  # fmt: skip
    assert with_model(body, "gpt-4o-mini") == body  # canonical form round-trips exactly
    other = with_model(body, "gpt-4o")
    assert json.loads(other) == {**json.loads(body), "model": "gpt-4o"}
    assert other == body.replace('"model":"gpt-4o-mini"', '"model":"gpt-4o"')
    assert request_hash(other) != request_hash(body)
    sent = sent_request("local", "gpt-4o-mini", body, endpoint_override="v2", model_override=None)
    assert (sent.endpoint, sent.model, sent.body) == ("v2", "gpt-4o-mini", body)
    sent = sent_request("local", "gpt-4o-mini", body, endpoint_override=None, model_override="x")
    assert (sent.endpoint, sent.model, json.loads(sent.body)["model"]) == ("local", "x", "x")


def test_selection_describes_what_it_replays() -> None:
    assert Selection().describe() == "all"
    assert Selection(keys=("a",)).describe() == "jobs"
    assert Selection(run_ids=(3,), only_failed=True).describe() == "jobs,only-failed"
    assert Selection(only_failed=True, only_changed=True).describe() == "only-failed,only-changed"


def test_fail_under_accepts_fractions_and_percentages() -> None:
    ctx = click.Context(click.Command("compare"))
    param = click.Option(["--fail-under"])
    assert _rate(ctx, param, "0.95") == 0.95
    assert _rate(ctx, param, "95%") == pytest.approx(0.95)
    assert _rate(ctx, param, None) is None
    for bad in ("lots", "1.5", "-1%"):
        with pytest.raises(click.BadParameter):
            _rate(ctx, param, bad)


def run(
    state: str,
    outputs: list[str],
    fingerprint: str | None = "fp_a",
    honoured: bool | None = None,
    embedding: bytes | None = None,
) -> SimpleNamespace:
    return SimpleNamespace(
        state=state,
        output=outputs[0] if outputs else None,
        outputs=json.dumps(outputs),
        tool_calls=None,
        embedding=embedding,
        n_honoured=honoured,
        system_fingerprint=fingerprint,
        sent_endpoint="local",
        sent_model="m",
        seed=None,
    )


def test_verify_tells_embeddings_apart_by_their_vectors() -> None:
    moved = judge("e", [run("succeeded", [], embedding=v) for v in (b"\0" * 4, b"\1" * 4)], 2)
    assert (moved.unique_outputs, moved.tarr, moved.mean_similarity) == (2, False, None)
    same = judge("e", [run("succeeded", [], embedding=b"\0" * 4) for _ in range(2)], 2)
    assert (same.unique_outputs, same.tarr) == (1, True)


def test_verify_verdicts() -> None:
    same = judge("s", [run("succeeded", ["x"]) for _ in range(3)], 3)
    assert (same.unique_outputs, same.tarr, same.mean_similarity) == (1, True, 1.0)
    varied = judge("v", [run("succeeded", [t]) for t in ("ab", "ac", "ab")], 3)
    assert (varied.unique_outputs, varied.tarr) == (2, False)
    assert varied.mean_similarity == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    one_failed = judge(
        "f", [run("succeeded", ["x"]), run("failed", []), run("succeeded", ["x"])], 3
    )
    assert (one_failed.unique_outputs, one_failed.succeeded, one_failed.tarr) == (1, 2, False)
    mixed = judge("m", [run("succeeded", ["x"], "fp_a"), run("succeeded", ["x"], None)], 2)
    assert mixed.fingerprints == ("fp_a", "null")
    # Several samples per run: every sample counts, and one run short of n says so.
    sampled = judge(
        "k",
        [
            run("succeeded", ["a b c", "a b d"], honoured=True),
            run("succeeded", ["a x"], None),
            run("succeeded", ["a b c", "a b c"], honoured=False),
        ],
        3,
    )
    assert (sampled.samples, sampled.distinct_samples, sampled.diverges_at) == (5, 3, 1)
    assert sampled.n_honoured is False
    assert (same.samples, same.distinct_samples, same.diverges_at, same.n_honoured) == (
        3, 1, None, None,
    )  # fmt: skip
    (g,) = group([same, varied, one_failed])
    assert (g.jobs, g.tarr, g.tarr_rate, g.seeded) == (3, 1, 1 / 3, False)
    assert g.mean_unique == pytest.approx(4 / 3)
