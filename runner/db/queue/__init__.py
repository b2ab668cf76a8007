"""The durable queue: every statement that writes batches, jobs, rounds, runs or attempts.

One package, one module per part (submit, claims, results, replay, schedules, admin);
this module re-exports them, so callers write ``queue.claim(...)``.

One named function per statement (or per transaction that must stay together).
Runs move ``queued -> running -> succeeded | failed | queued (retry)``; a running
run has an owner and a lease. Claims take back runs whose lease expired, and every
write made on behalf of a claim is fenced on ``(state='running', lease_owner,
attempts)`` so a worker that lost its lease can never overwrite a newer result.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` so many workers never block on
or double-claim the same rows; on SQLite (where SQLAlchemy omits the clause)
``BEGIN IMMEDIATE`` serialises writers instead.
"""

from __future__ import annotations

from runner.db.queue._common import (
    DEADLOCK,
    QueueEngine,
    SentRequest,
    samples_asked,
    sent_endpoint,
    sent_hash,
    sent_request,
    with_changes,
    with_model,
)
from runner.db.queue.admin import (
    ANALYZE_AFTER,
    analyze,
    cancel_runs,
    requeue_runs,
    store_prices,
)
from runner.db.queue.claims import (
    ClaimedRun,
    LaterRuns,
    Unfinished,
    claim,
    database_now,
    heartbeat,
    register_worker,
    release,
    unfinished,
    unregister_worker,
    worker_heartbeat,
)
from runner.db.queue.replay import (
    ITEM_CHUNK,
    REUSE_CHUNK,
    batch_endpoint,
    create_replay_round,
    enqueue_jobs,
    insert_comparison,
    reuse_results,
    sent_hashes,
)
from runner.db.queue.results import (
    Outcome,
    record,
    unfinished_endpoints,
)
from runner.db.queue.schedules import (
    TICK_TRIES,
    TickRound,
    claim_drift_hook,
    create_tick_round,
    delete_schedule,
    finish_drift_hook,
    insert_drift_report,
    insert_schedule,
    pause_schedule,
    resume_schedule,
    tries_per_run,
)
from runner.db.queue.submit import (
    LastRound,
    complete_batch,
    create_round,
    discard_batch,
    discard_stale_batches,
    enqueue_round,
    identical_batch,
    insert_batch,
    insert_chunk,
    insert_jobs,
)

__all__ = [
    "ANALYZE_AFTER",
    "DEADLOCK",
    "ITEM_CHUNK",
    "REUSE_CHUNK",
    "TICK_TRIES",
    "ClaimedRun",
    "LastRound",
    "LaterRuns",
    "Outcome",
    "QueueEngine",
    "SentRequest",
    "TickRound",
    "Unfinished",
    "analyze",
    "batch_endpoint",
    "cancel_runs",
    "claim",
    "claim_drift_hook",
    "complete_batch",
    "create_replay_round",
    "create_round",
    "create_tick_round",
    "database_now",
    "delete_schedule",
    "discard_batch",
    "discard_stale_batches",
    "enqueue_jobs",
    "enqueue_round",
    "finish_drift_hook",
    "heartbeat",
    "identical_batch",
    "insert_batch",
    "insert_chunk",
    "insert_comparison",
    "insert_drift_report",
    "insert_jobs",
    "insert_schedule",
    "pause_schedule",
    "record",
    "register_worker",
    "release",
    "requeue_runs",
    "resume_schedule",
    "reuse_results",
    "samples_asked",
    "sent_endpoint",
    "sent_hash",
    "sent_hashes",
    "sent_request",
    "store_prices",
    "tries_per_run",
    "unfinished",
    "unfinished_endpoints",
    "unregister_worker",
    "with_changes",
    "with_model",
    "worker_heartbeat",
]
