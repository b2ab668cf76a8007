"""Rendering of replay, compare, diff and verify results: rich tables, JSON, CSV, word diffs.

Every function returns text; the CLI prints it. Tables are drawn by rich into a
buffer (``richtext.render``), in colour only when asked (a terminal), so piped output
stays plain; no text is ever parsed as rich markup or emoji codes.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from typing import Any

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from runner.analysis.compare import ComparisonReport, Item, RoundRef, Stats
from runner.analysis.diff import JobDiff
from runner.analysis.distribution import DistributionTest, Verdict
from runner.analysis.similarity import DiffOp
from runner.analysis.verify import JobVerdict, VerifyReport
from runner.db.models import FingerprintGroup
from runner.replay import Replayed
from runner.richtext import render

MOVED_MOST = 5  # jobs listed as those that moved most


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: int | None) -> str:
    return "-" if value is None else f"{value:+d}"


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(*columns, box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    return table


# ---------------------------------------------------------------- replay


def replayed_line(r: Replayed) -> str:
    overrides = "".join(
        f", {name} {value}"
        for name, value in (("endpoint", r.endpoint), ("model", r.model), ("samples", r.samples))
        if value
    )
    reused = f" ({r.reused} reused from stored results)" if r.reused else ""
    return (
        f"batch {r.batch_id} ({r.batch_name}): round {r.round_number} (replay of {r.selection}"
        f"{overrides}): {r.queued} runs queued{reused}"
    )


# ---------------------------------------------------------------- compare


def _side(ref: RoundRef) -> str:
    overrides = "".join(
        f", {name} {value}"
        for name, value in (("endpoint", ref.endpoint), ("model", ref.model))
        if value
    )
    return f"batch {ref.batch_id} ({ref.batch_name}) round {ref.number} ({ref.trigger}{overrides})"


def _label(ref: RoundRef, other: RoundRef) -> str:
    return f"round {ref.number}" if ref.batch_id == other.batch_id else f"batch {ref.batch_id}"


def _prints(counts: dict[str, int]) -> str:
    return ", ".join(f"{fp} x{n}" for fp, n in counts.items()) or "-"


def _group_row(name: str, s: Stats, embeddings: bool) -> list[str]:
    row = [name, str(s.jobs), str(s.exact) if s.jobs else "-", _pct(s.exact_rate)]
    row += [_num(s.mean_similarity), _num(s.min_similarity)]
    if embeddings:
        row.append(_num(s.mean_embedding_distance, 4))
    return row


def comparison_table(report: ComparisonReport, *, color: bool = False, width: int = 100) -> str:
    s = report.summary
    a, b = _label(report.a, report.b), _label(report.b, report.a)
    embeddings = report.embeddings_endpoint is not None
    second = _side(report.b)
    if report.a.batch_id == report.b.batch_id:
        second = second.split(") ", 1)[1]  # the batch is named once
    head = Text.assemble((f"comparison {report.id}", "bold"), f": {_side(report.a)} -> {second}")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("jobs", f"{s.matched} matched (only in {a}: {s.only_a}, only in {b}: {s.only_b})")
    facts.add_row("exact matches", f"{s.overall.exact}/{s.matched} ({_pct(s.exact_match_rate)})")
    facts.add_row(
        "similarity",
        f"mean {_num(s.overall.mean_similarity)}, min {_num(s.overall.min_similarity)}",
    )
    facts.add_row(
        "failed",
        f"{a}: {s.failed_a}, {b}: {s.failed_b} (on one side only: {s.failed_one_side})",
    )
    facts.add_row("fingerprints", Text(f"{a}: {_prints(s.fingerprints_a)}"))
    facts.add_row("", Text(f"{b}: {_prints(s.fingerprints_b)}"))
    if report.distribution is not None:
        facts.add_row("distribution", Text(report.distribution.describe()))
        moved = report.distribution.moved_most[:MOVED_MOST]
        if moved and report.distribution.verdict is Verdict.CHANGED:
            facts.add_row("moved most", Text(", ".join(moved)))
    if s.different_requests:
        facts.add_row(
            "requests", f"{s.different_requests} jobs sent a different body (--model, --samples)"
        )
    if set(s.kinds) - {"chat"}:
        facts.add_row("kinds", ", ".join(f"{n} {api}" for api, n in s.kinds.items()))
    if s.schema_a[1] or s.schema_b[1]:
        facts.add_row(
            "json schema",
            f"valid in {a}: {_valid_share(s.schema_a)}, in {b}: {_valid_share(s.schema_b)}",
        )
    if s.incomplete_a or s.incomplete_b:
        facts.add_row(
            "incomplete",
            f"{a}: {s.incomplete_a}, {b}: {s.incomplete_b} "
            "(responses cut short by max_output_tokens: not whole answers)",
        )
    if embeddings:
        facts.add_row(
            "embeddings",
            Text(
                f"mean cosine distance {_num(s.overall.mean_embedding_distance, 4)} "
                f"({report.embeddings_endpoint}, {report.embeddings_model})"
            ),
        )
    columns = ["fingerprint", "jobs", "exact", "exact rate", "mean sim.", "min sim."]
    groups = _table(
        *columns,
        *(["emb. dist."] if embeddings else []),
        title="by fingerprint (jobs that succeeded on both sides)",
    )
    names = {
        FingerprintGroup.SAME: "same",
        FingerprintGroup.CHANGED: "changed",
        FingerprintGroup.UNKNOWN: "unknown (null)",
    }
    for group, name in names.items():
        groups.add_row(*_group_row(name, s.by_fingerprint[group], embeddings))
    parts: list[RenderableType] = [head, facts, groups]
    if report.changed_most:
        parts.append(_changed_table(report.changed_most, a, b))
    parts.append(
        Text(
            f"stored as comparison {report.id}: "
            f"SELECT * FROM comparison_items WHERE comparison_id = {report.id}",
            style="dim",
        )
    )
    return render(parts, color=color, width=width)


def _valid_share(counts: tuple[int, int]) -> str:
    valid, checked = counts
    return f"{valid}/{checked} ({_pct(valid / checked if checked else None)})"


def _changed_table(items: list[Item], a: str, b: str) -> Table:
    table = _table(
        "job", "similarity", "diverges at", "fingerprint", "same model", "tokens +/-",
        title="changed most",
    )  # fmt: skip
    for i in items:
        if not i.a.ok or not i.b.ok:
            failed = ", ".join(
                f"{side}: {r.state} ({r.error_type})"
                for side, r in ((a, i.a), (b, i.b))
                if not r.ok
            )
            table.add_row(Text(i.key), Text(failed), "", "", "", "")
            continue
        table.add_row(
            Text(i.key),
            _num(i.similarity),
            "-" if i.divergence_offset is None else f"char {i.divergence_offset}",
            i.fingerprint.value if i.fingerprint else "-",
            "yes" if i.same_model else "no",
            f"{_signed(i.prompt_tokens_delta)} / {_signed(i.completion_tokens_delta)}",
        )
    return table


def _ref_dict(ref: RoundRef) -> dict[str, Any]:
    return {
        "batch_id": ref.batch_id,
        "batch_name": ref.batch_name,
        "round": ref.number,
        "round_id": ref.round_id,
        "trigger": ref.trigger,
        "endpoint_override": ref.endpoint,
        "model_override": ref.model,
    }


def _stats_dict(s: Stats) -> dict[str, Any]:
    return {**asdict(s), "exact_rate": s.exact_rate}


ITEM_FIELDS = (
    "key", "run_a", "run_b", "state_a", "state_b", "same_request", "exact_match",
    "similarity", "divergence_offset", "fingerprint", "fingerprint_a", "fingerprint_b",
    "same_model", "model_a", "model_b", "prompt_tokens_delta", "completion_tokens_delta",
    "embedding_distance", "error_a", "error_b", "samples_a", "samples_b",
    "test_contribution", "test_p_value", "distribution", "distribution_p_value",
    "api", "status_a", "status_b", "schema_valid_a", "schema_valid_b",
)  # fmt: skip


def item_dict(i: Item, tested: DistributionTest | None = None) -> dict[str, Any]:
    """One job of a comparison; with the distribution test: its part in it, and the
    round's verdict (so that each CSV line carries it)."""
    job = tested.by_job.get(i.key) if tested is not None else None
    return {
        "key": i.key,
        "run_a": i.a.run_id,
        "run_b": i.b.run_id,
        "state_a": i.a.state,
        "state_b": i.b.state,
        "same_request": i.same_request,
        "exact_match": i.exact_match,
        "similarity": i.similarity,
        "divergence_offset": i.divergence_offset,
        "fingerprint": i.fingerprint.value if i.fingerprint else None,
        "fingerprint_a": i.a.fingerprint,
        "fingerprint_b": i.b.fingerprint,
        "same_model": i.same_model,
        "model_a": i.a.response_model,
        "model_b": i.b.response_model,
        "prompt_tokens_delta": i.prompt_tokens_delta,
        "completion_tokens_delta": i.completion_tokens_delta,
        "embedding_distance": i.embedding_distance,
        "error_a": i.a.error_type,
        "error_b": i.b.error_type,
        "samples_a": len(i.a.outputs),
        "samples_b": len(i.b.outputs),
        "test_contribution": job.contribution if job else None,
        "test_p_value": job.p_value if job else None,
        "distribution": tested.verdict.value if tested else None,
        "distribution_p_value": tested.p_value if tested else None,
        "api": i.a.api,
        "status_a": i.a.response_status,
        "status_b": i.b.response_status,
        "schema_valid_a": i.a.schema_valid,
        "schema_valid_b": i.b.schema_valid,
    }


def _distribution_dict(tested: DistributionTest | None) -> dict[str, Any] | None:
    if tested is None:
        return None
    return {
        **{k.removeprefix("test_"): v for k, v in tested.columns().items()},
        "moved_most": list(tested.moved_most[:MOVED_MOST]),
    }


def comparison_json(report: ComparisonReport) -> str:
    s = report.summary
    document = {
        "comparison_id": report.id,
        "created_at": report.created_at.isoformat(),
        "a": _ref_dict(report.a),
        "b": _ref_dict(report.b),
        "summary": {
            "matched": s.matched,
            "only_a": s.only_a,
            "only_b": s.only_b,
            "exact_matches": s.overall.exact,
            "exact_match_rate": s.exact_match_rate,
            "mean_similarity": s.overall.mean_similarity,
            "min_similarity": s.overall.min_similarity,
            "failed_a": s.failed_a,
            "failed_b": s.failed_b,
            "failed_one_side": s.failed_one_side,
            "different_requests": s.different_requests,
            "fingerprints_a": s.fingerprints_a,
            "fingerprints_b": s.fingerprints_b,
            "by_fingerprint": {g.value: _stats_dict(st) for g, st in s.by_fingerprint.items()},
            "mean_embedding_distance": s.overall.mean_embedding_distance,
            "embeddings_endpoint": report.embeddings_endpoint,
            "embeddings_model": report.embeddings_model,
            "kinds": s.kinds,
            "incomplete_a": s.incomplete_a,
            "incomplete_b": s.incomplete_b,
            "schema_valid_a": s.schema_a[0],
            "schema_checked_a": s.schema_a[1],
            "schema_valid_b": s.schema_b[0],
            "schema_checked_b": s.schema_b[1],
        },
        "distribution": _distribution_dict(report.distribution),
        "changed_most": [i.key for i in report.changed_most],
        "items": [item_dict(i, report.distribution) for i in report.items],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def comparison_csv(report: ComparisonReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ITEM_FIELDS, lineterminator="\n")
    writer.writeheader()
    for item in report.items:
        writer.writerow(item_dict(item, report.distribution))
    return buffer.getvalue().rstrip("\n")


# ---------------------------------------------------------------- diff


def _run_line(ref: RoundRef, d: JobDiff, side: str) -> Text:
    r = d.run_a if side == "a" else d.run_b
    if not r.ok:
        return Text(
            f"round {ref.number} (run {r.run_id}): {r.state}: {r.error_type}: {r.error_message}"
        )
    return Text(
        f"round {ref.number} (run {r.run_id}): fingerprint {r.fingerprint or 'null'}, "
        f"model {r.response_model}, {r.completion_tokens} completion tokens, "
        f"{len(r.text)} characters"
    )


def diff_text(d: JobDiff, *, color: bool = False, width: int = 100) -> str:
    head = Text(
        f"batch {d.a.batch_id} ({d.a.batch_name}) job {d.key!r}: "
        f"round {d.a.number} -> round {d.b.number}",
        style="bold",
    )
    parts: list[RenderableType] = [head, _run_line(d.a, d, "a"), _run_line(d.b, d, "b")]
    if not (d.run_a.ok and d.run_b.ok):
        parts.append(Text("no diff: a run did not succeed"))
    elif d.identical:
        parts.append(Text(f"identical outputs ({len(d.run_a.text)} characters)"))
    else:
        parts.append(
            Text(
                f"similarity {_num(d.similarity)}, "
                f"first divergence at character {d.divergence_offset}"
            )
        )
        body = Text()
        for piece in d.pieces:
            if piece.op is DiffOp.EQUAL:
                body.append(piece.text)
            elif piece.op is DiffOp.DELETE:
                body.append(piece.text if color else f"[-{piece.text}-]", style="red strike")
            else:
                body.append(piece.text if color else f"{{+{piece.text}+}}", style="green")
        parts.append(Text(""))
        parts.append(body)
    return render(parts, color=color, width=width)


# ---------------------------------------------------------------- verify


def _rounds(numbers: list[int]) -> str:
    if numbers and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"rounds {numbers[0]}-{numbers[-1]}"
    return "rounds " + ", ".join(map(str, numbers))


def _least_deterministic(report: VerifyReport, limit: int) -> list[JobVerdict]:
    """All jobs in key order, or the ``limit`` least deterministic ones (in key order)."""
    if len(report.jobs) <= limit:
        return report.jobs
    ranked = sorted(
        report.jobs,
        key=lambda j: (j.tarr, -j.unique_outputs, j.mean_similarity or 0.0, j.key),
    )
    return sorted(ranked[:limit], key=lambda j: j.key)


def verify_table(
    report: VerifyReport, *, top: int = 50, color: bool = False, width: int = 100
) -> str:
    k = report.times
    head = Text(
        f"verify batch {report.batch_id} ({report.batch_name}): {len(report.jobs)} jobs "
        f"x {k} runs ({_rounds(report.round_numbers)})",
        style="bold",
    )
    groups = _table(
        "endpoint", "model", "fingerprint", "seeded", "jobs", f"TARr@{k}", f"unique/{k}",
        "similarity",
        title=f"per endpoint / model / fingerprint (unique/{k}: mean distinct outputs per job)",
    )  # fmt: skip
    for g in report.groups:
        groups.add_row(
            Text(g.endpoint),
            Text(g.model),
            Text(g.fingerprint),
            "yes" if g.seeded else "no",
            str(g.jobs),
            f"{g.tarr}/{g.jobs} ({_pct(g.tarr_rate)})",
            f"{g.mean_unique:.1f}",
            _num(g.mean_similarity),
        )
    shown = _least_deterministic(report, top)
    more = len(report.jobs) - len(shown)
    title = "per job" + (
        f" (the {len(shown)} least deterministic; --format json: all)" if more else ""
    )
    # Several samples per run: distinct texts among all of them, and whether the
    # endpoint honoured n (columns shown only when they say something).
    sampled = any(j.samples > j.succeeded for j in report.jobs)
    asked_n = any(j.n_honoured is not None for j in report.jobs)
    jobs = _table(
        "job", "seed", "fingerprint", "unique outputs", f"TARr@{k}", "similarity", "diverges",
        *(["distinct samples"] if sampled else []), *(["n honoured"] if asked_n else []),
        title=title,
    )  # fmt: skip
    for j in shown:
        jobs.add_row(
            Text(j.key),
            "-" if j.seed is None else str(j.seed),
            Text("+".join(j.fingerprints) or "-"),
            f"{j.unique_outputs}/{k}" + (f" ({j.succeeded} ok)" if j.succeeded < k else ""),
            "yes" if j.tarr else "no",
            _num(j.mean_similarity),
            "-" if j.diverges_at is None else f"word {j.diverges_at}",
            *([f"{j.distinct_samples}/{j.samples}"] if sampled else []),
            *([{None: "-", True: "yes", False: "no"}[j.n_honoured]] if asked_n else []),
        )
    parts: list[RenderableType] = [head, groups, jobs]
    if report.failed_runs or report.unfinished_runs:
        parts.append(
            Text(
                f"{report.failed_runs} runs failed, {report.unfinished_runs} did not finish: "
                "see `runner status " + str(report.batch_id) + "`",
                style="bold red",
            )
        )
    return render(parts, color=color, width=width)


def verify_json(report: VerifyReport) -> str:
    document = {
        "batch_id": report.batch_id,
        "batch_name": report.batch_name,
        "times": report.times,
        "rounds": report.round_numbers,
        "failed_runs": report.failed_runs,
        "unfinished_runs": report.unfinished_runs,
        "groups": [{**asdict(g), "tarr_rate": g.tarr_rate} for g in report.groups],
        "jobs": [asdict(j) for j in report.jobs],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)
