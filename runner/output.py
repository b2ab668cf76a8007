"""Plain-text and JSON rendering of CLI results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from runner.report import BatchStatus
from runner.worker import WorkerStats

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def worker_summary(stats: WorkerStats) -> str:
    return (
        f"worker done: {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.retried} retries, {stats.released} released"
    )


def status_text(statuses: Sequence[BatchStatus]) -> str:
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
            lines.append(
                f"    tokens: {rnd.prompt_tokens} prompt + {rnd.completion_tokens} completion"
            )
            if rnd.fingerprints:
                shown = ", ".join(f or "null" for f in rnd.fingerprints)
                lines.append(f"    system_fingerprint: {shown}")
            for error_type, count in rnd.errors:
                lines.append(f"    failed: {count} x {error_type}")
    return "\n".join(lines)


def status_json(statuses: Sequence[BatchStatus]) -> str:
    return json.dumps([asdict(s) for s in statuses], default=str, indent=2)


def run_text(d: dict[str, Any]) -> str:
    lines = [
        f"run {d['id']}: batch {d['batch_id']} ({d['batch_name']}) round {d['round_number']} "
        f"job {d['key']!r}",
        f"state: {d['state']} after {d['attempts']} attempt(s) of {d['max_attempts']}",
        f"endpoint: {d['endpoint']}  model asked: {d['model']}  returned: {d['response_model']}",
        f"seed: {d['seed']}  system_fingerprint: {d['system_fingerprint']}",
        f"request_hash: {d['request_hash']}",
    ]
    if d.get("reused_from_run_id"):
        lines.append(f"reused the stored result of run {d['reused_from_run_id']} (--reuse)")
    if d["state"] == "succeeded":
        lines.append(
            f"tokens: {d['prompt_tokens']} prompt + {d['completion_tokens']} completion = "
            f"{d['total_tokens']}  latency: {d['latency_ms']:.1f} ms  "
            f"finish_reason: {d['finish_reason']}"
        )
        outputs = json.loads(d["outputs"] or "[]")
        for index, text in enumerate(outputs):
            label = "output" if len(outputs) == 1 else f"output (choice {index})"
            lines.append(f"--- {label} ---\n{text}")
    elif d["error_type"]:
        status = f" (HTTP {d['error_status']})" if d["error_status"] else ""
        lines.append(f"error: {d['error_type']}{status}: {d['error_message']}")
    return "\n".join(lines)
