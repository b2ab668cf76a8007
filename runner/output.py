"""Plain-text and JSON rendering of CLI results."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from runner.config import Price
from runner.report import BatchLine, BatchStatus

if TYPE_CHECKING:
    from runner.work import WorkerStats

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def worker_summary(stats: WorkerStats) -> str:
    line = (
        f"worker done: {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.retried} retries, {stats.released} released"
    )
    if stats.abandoned:
        line += f", {stats.abandoned} abandoned (cancelled or taken over)"
    if stats.fenced_out:
        line += f", {stats.fenced_out} results discarded (their runs were no longer ours)"
    if stats.database_outages:
        line += f", waited out {stats.database_outages} database outage(s)"
    return line


def batches_text(batches: Sequence[BatchLine]) -> str:
    if not batches:
        return "no batches yet: submit one with `runner submit JOBFILE`"
    wide = max(24, *(len(b.name) for b in batches))  # names are shown whole, never cut
    lines = [f"{'id':>4}  {'name':{wide}} {'jobs':>7} {'rounds':>6}  {'last round':34} fingerprint"]
    for b in batches:
        counts = b.last_round_counts
        done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        last = "-"
        if b.last_round is not None:
            failed = counts.get("failed", 0)
            last = f"#{b.last_round}: {done}/{sum(counts.values())} done" + (
                f", {failed} failed" if failed else ""
            )
        lines.append(
            f"{b.id:>4}  {b.name:{wide}} {b.job_count:>7} {b.rounds:>6}  {last:34} "
            f"{b.last_fingerprint or '-'}"
        )
    return "\n".join(lines)


def cost_text(cost: float | None, unpriced: Sequence[str]) -> str:
    if cost is None:
        return f"cost: unknown (no price for {', '.join(unpriced)} in runner.toml [prices])"
    return f"cost: ${cost:,.4f}"


def status_text(statuses: Sequence[BatchStatus], prices: Mapping[str, Price] | None = None) -> str:
    if not statuses:
        return "no batches yet: submit one with `runner submit JOBFILE`"
    lines = []
    for batch in statuses:
        lines.append(
            f"batch {batch.id} {batch.name}  ({batch.job_count} jobs, from {batch.source_path}, "
            f"submitted {batch.submitted_at:%Y-%m-%d %H:%M:%S} UTC)"
        )
        for rnd in batch.rounds:
            counts = ", ".join(f"{rnd.counts.get(s, 0)} {s}" for s in STATES if rnd.counts.get(s))
            overrides = "".join(
                f", {name} {value}"
                for name, value in (("endpoint", rnd.endpoint), ("model", rnd.model))
                if value
            )
            lines.append(
                f"  round {rnd.number} ({rnd.trigger}{overrides}): "
                f"{rnd.done}/{rnd.total} done: {counts}"
            )
            tokens = f"    tokens: {rnd.prompt_tokens} prompt + {rnd.completion_tokens} completion"
            if rnd.tokens_by_model:
                tokens += "; " + cost_text(*rnd.cost(prices or {}))
            lines.append(tokens)
            if set(rnd.kinds) - {"chat"}:  # chat-only rounds read as they always did
                kinds = ", ".join(f"{count} {api}" for api, count in sorted(rnd.kinds.items()))
                lines.append(f"    requests: {kinds}")
            if rnd.incomplete:
                lines.append(
                    f"    incomplete: {rnd.incomplete} responses cut short "
                    "(status incomplete: see incomplete_details)"
                )
            if rnd.schema_checked:
                share = rnd.schema_valid / rnd.schema_checked
                lines.append(
                    f"    json schema: {rnd.schema_valid}/{rnd.schema_checked} outputs valid "
                    f"({share:.1%})"
                )
            if rnd.fingerprints:
                shown = ", ".join(f or "null" for f in rnd.fingerprints)
                lines.append(f"    system_fingerprint: {shown}")
            for error_type, count in rnd.errors:
                lines.append(f"    failed: {count} x {error_type}")
    return "\n".join(lines)


def status_json(statuses: Sequence[BatchStatus], prices: Mapping[str, Price] | None = None) -> str:
    data = []
    for status in statuses:
        entry = asdict(status)
        for rnd, out in zip(status.rounds, entry["rounds"], strict=True):
            cost, unpriced = rnd.cost(prices or {})
            out["cost_usd"] = cost  # null when a model has no price: unknown, not 0
            out["unpriced_models"] = unpriced
        data.append(entry)
    return json.dumps(data, default=str, indent=2)


def _shown(value: Any) -> str:
    """A stored value as text: a missing one is ``null``, as in JSON and everywhere else."""
    return "null" if value is None else str(value)


def run_json(d: dict[str, Any]) -> str:
    """``runner show --format json``: every stored value; an embeddings run's vectors as
    lists of numbers (their float32 values)."""
    if d.get("embedding") is not None:
        from runner.kinds import vectors

        d = {**d, "embedding": vectors.unpack(bytes(d["embedding"]), d["embedding_dimensions"])}
    return json.dumps(d, default=str, indent=2)


def run_text(d: dict[str, Any]) -> str:
    v = {name: _shown(value) for name, value in d.items()}
    lines = [
        f"run {v['id']}: batch {v['batch_id']} ({v['batch_name']}) round {v['round_number']} "
        f"job {d['key']!r}",
        f"state: {v['state']} after {v['attempts']} attempt(s) of {v['max_attempts']}",
        f"api: {v['api']}  endpoint: {v['endpoint']}  model asked: {v['model']}  "
        f"returned: {v['response_model']}",
        f"seed: {v['seed']}  system_fingerprint: {v['system_fingerprint']}",
        f"request_hash: {v['request_hash']}",
    ]
    if d.get("reused_from_run_id"):
        lines.append(f"reused the stored result of run {d['reused_from_run_id']} (--reuse)")
    if d["state"] == "succeeded":
        latency = "null" if d["latency_ms"] is None else f"{d['latency_ms']:.1f} ms"
        lines.append(
            f"tokens: {v['prompt_tokens']} prompt + {v['completion_tokens']} completion = "
            f"{v['total_tokens']}  latency: {latency}  finish_reason: {v['finish_reason']}"
        )
        if d.get("tool_calls") is not None:
            lines.append(f"tool calls: {d['tool_calls']}")
        if d.get("response_status") is not None:
            lines.append(
                f"response status: {v['response_status']}  "
                f"incomplete_details: {v['incomplete_details']}"
            )
    elif d["error_type"]:
        status = f" (HTTP {d['error_status']})" if d["error_status"] else ""
        lines.append(f"error: {d['error_type']}{status}: {d['error_message']}")
    # The body exactly as sent: canonical JSON, the bytes request_hash is over.
    lines.append(f"--- request body ---\n{d['body']}")
    if d["state"] == "succeeded" and d.get("embedding") is not None:
        from runner.kinds import vectors

        rows = vectors.unpack(bytes(d["embedding"]), d["embedding_dimensions"])
        lines.append(
            f"--- embedding: {len(rows)} vector(s) x {d['embedding_dimensions']} dimensions "
            f"(float32, {len(d['embedding'])} bytes) ---"
        )
        for index, row in enumerate(rows):
            head = ", ".join(f"{value:.6g}" for value in row[:8])
            lines.append(f"[{index}] {head}{', ...' if len(row) > 8 else ''}")
    elif d["state"] == "succeeded":
        outputs = json.loads(d["outputs"] or "[]")
        for index, text in enumerate(outputs):
            label = "output" if len(outputs) == 1 else f"output (choice {index})"
            lines.append(f"--- {label} ---\n{_shown(text)}")
    return "\n".join(lines)
