"""Queue SQL on both backends: claims, leases, fencing, release, retries."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.db import engine as db
from runner.db import queue
from runner.db.models import RunState
from runner.db.queue import Outcome
from tests.helpers import rows, scalar, submit_jobs

pytestmark = pytest.mark.anyio
LEASE = timedelta(seconds=60)
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def hot(engine: AsyncEngine) -> Iterator[queue.QueueEngine]:
    """Where a worker claims and stores: inline on SQLite, the async engine on PostgreSQL."""
    if not db.is_sqlite(engine):
        yield engine
        return
    inline = db.InlineSQLite.of(engine)
    yield inline
    inline.dispose()


def success(run: queue.ClaimedRun, now: datetime, text: str = "ok") -> Outcome:
    return Outcome(
        run_id=run.run_id, attempt=run.attempt, started_at=now, finished_at=now,
        latency_ms=1.0, outcome="succeeded", http_status=200, response="{}", output=text,
        outputs=f'["{text}"]', finish_reason="stop", response_model="m",
        system_fingerprint=None, prompt_tokens=1, completion_tokens=1, total_tokens=2,
    )  # fmt: skip


async def mark_sent(hot: queue.QueueEngine, owner: str, *runs: queue.ClaimedRun) -> None:
    """As a worker's writer does once it has sent the runs' requests."""
    assert await queue.record(hot, owner, [], sent=[r.run_id for r in runs]) == []


async def test_claims_are_disjoint_and_carry_the_job(
    engine: AsyncEngine, hot: queue.QueueEngine, tmp_path: Path
) -> None:
    sub = await submit_jobs(engine, tmp_path, 5)
    first = await queue.claim(hot, "a", 3, lease=LEASE, now=T0)
    second = await queue.claim(hot, "b", 3, lease=LEASE, now=T0)
    assert len(first) == 3 and len(second) == 2
    assert not {r.run_id for r in first} & {r.run_id for r in second}
    assert await queue.claim(hot, "c", 3, lease=LEASE, now=T0) == []
    run = first[0]
    assert (run.attempt, run.max_attempts, run.batch_id, run.round_number) == (
        1,
        5,
        sub.batch_id,
        1,
    )
    assert run.endpoint == "local" and run.model == "test-model" and '"seed":42' in run.body
    state = await rows(engine, "SELECT state, lease_owner, attempts FROM runs ORDER BY id")
    assert [tuple(r) for r in state] == [("running", "a", 1)] * 3 + [("running", "b", 1)] * 2


async def test_expired_lease_is_taken_back_and_stale_owner_is_fenced_out(
    engine: AsyncEngine, hot: queue.QueueEngine, tmp_path: Path
) -> None:
    await submit_jobs(engine, tmp_path, 1)
    (old,) = await queue.claim(hot, "old", 1, lease=LEASE, now=T0)
    await mark_sent(hot, "old", old)
    # Still leased: nobody else can take it.
    assert await queue.claim(hot, "new", 1, lease=LEASE, now=T0 + LEASE / 2) == []
    later = T0 + LEASE + timedelta(seconds=1)
    (new,) = await queue.claim(hot, "new", 1, lease=LEASE, now=later)
    assert new.run_id == old.run_id and new.attempt == 2
    ids = [old.run_id]
    assert await queue.heartbeat(engine, "old", ids, lease=LEASE, now=later) == set()
    assert await queue.heartbeat(engine, "new", ids, lease=LEASE, now=later) == {new.run_id}
    # Only the runs named are renewed: one a worker no longer tracks is left to expire.
    assert await queue.heartbeat(engine, "new", [], lease=LEASE, now=later) == set()
    # The stale worker's late result is not stored; the owner's is.
    stale = success(old, later, "stale")
    assert await queue.record(hot, "old", [stale]) == [stale]
    assert await queue.record(hot, "new", [success(new, later, "fresh")]) == []
    (run,) = await rows(engine, "SELECT state, output, attempts, lease_owner FROM runs")
    assert tuple(run) == ("succeeded", "fresh", 2, None)
    # Both tries are visible as attempts; only the stored one says it succeeded.
    attempts = await rows(
        engine, "SELECT number, worker, outcome, http_status FROM attempts ORDER BY number"
    )
    assert [tuple(a) for a in attempts] == [
        (1, "old", "discarded", 200),
        (2, "new", "succeeded", 200),
    ]


async def test_a_cancelled_runs_late_result_is_discarded_and_a_released_try_not_counted(
    engine: AsyncEngine, hot: queue.QueueEngine, tmp_path: Path
) -> None:
    sub = await submit_jobs(engine, tmp_path, 2)
    a, b = await queue.claim(hot, "w", 2, lease=LEASE, now=T0)
    assert await queue.cancel_runs(engine, [sub.round_id], T0) == (0, 2)
    late = success(a, T0, "late")
    # The 401 that made the worker give its endpoint up: the run goes back uncounted.
    released = Outcome(
        run_id=b.run_id, attempt=b.attempt, started_at=T0, finished_at=T0, latency_ms=3,
        outcome="released", http_status=401, provider_request_id="req_401",
        error_type="http_401", error_message="Invalid API key",
        error_body='{"detail": "Invalid API key"}',
    )  # fmt: skip
    assert await queue.record(hot, "w", [late, released]) == [late, released]
    runs = await rows(engine, "SELECT state, output, attempts FROM runs ORDER BY id")
    assert [tuple(r) for r in runs] == [("cancelled", None, 1), ("cancelled", None, 1)]
    attempts = await rows(engine, "SELECT outcome, http_status FROM attempts ORDER BY run_id")
    assert [tuple(r) for r in attempts] == [("discarded", 200), ("discarded", 401)]

    await queue.requeue_runs(engine, [sub.round_id], [RunState.CANCELLED], extra_attempts=3, now=T0)
    (again,) = [
        r for r in await queue.claim(hot, "w", 2, lease=LEASE, now=T0) if r.run_id == b.run_id
    ]
    assert again.attempt == 2
    released = replace(released, attempt=again.attempt)
    assert await queue.record(hot, "w", [released]) == []
    (run,) = await rows(
        engine,
        "SELECT state, attempts, error_status, error_message, error_body, lease_owner "
        f"FROM runs WHERE id = {b.run_id}",
    )
    assert tuple(run) == (
        "queued",
        1,
        401,
        "Invalid API key",
        '{"detail": "Invalid API key"}',
        None,
    )
    (attempt,) = await rows(
        engine,
        "SELECT outcome, provider_request_id, error_body FROM attempts "
        f"WHERE run_id = {b.run_id} AND number = 2",
    )
    assert tuple(attempt) == ("released", "req_401", '{"detail": "Invalid API key"}')


async def test_retry_waits_for_available_at_and_release_does_not_count(
    engine: AsyncEngine, hot: queue.QueueEngine, tmp_path: Path
) -> None:
    await submit_jobs(engine, tmp_path, 2)
    a, b = await queue.claim(hot, "w", 2, lease=LEASE, now=T0)
    retry = Outcome(
        run_id=a.run_id, attempt=a.attempt, started_at=T0, finished_at=T0, latency_ms=5,
        outcome="retry", http_status=503, retry_at=T0 + timedelta(seconds=30),
        error_type="server_error", error_message="busy",
    )  # fmt: skip
    assert await queue.record(hot, "w", [retry]) == []
    assert await queue.release(engine, "w", [b.run_id], T0) == 1
    state = await rows(engine, "SELECT id, state, attempts, error_status FROM runs ORDER BY id")
    assert [tuple(r) for r in state] == [
        (a.run_id, "queued", 1, 503),
        (b.run_id, "queued", 0, None),
    ]
    (again,) = await queue.claim(hot, "w", 2, lease=LEASE, now=T0 + timedelta(seconds=1))
    assert again.run_id == b.run_id and again.attempt == 1
    (retried,) = await queue.claim(hot, "w", 2, lease=LEASE, now=T0 + timedelta(seconds=31))
    assert retried.run_id == a.run_id and retried.attempt == 2


async def test_dead_worker_with_no_attempts_left_fails_the_run(
    engine: AsyncEngine, hot: queue.QueueEngine, tmp_path: Path
) -> None:
    await submit_jobs(engine, tmp_path, 1, extra="max_attempts: 1\n")
    await mark_sent(hot, "dead", *await queue.claim(hot, "dead", 1, lease=LEASE, now=T0))
    assert await queue.claim(hot, "w", 1, lease=LEASE, now=T0 + 2 * LEASE) == []
    (run,) = await rows(engine, "SELECT state, error_type FROM runs")
    assert tuple(run) == ("failed", "lease_expired")
    assert (await queue.unfinished(engine, None, [], T0 + 2 * LEASE)).count == 0


async def test_a_dead_workers_runs_it_never_sent_are_taken_back_without_counting_a_try(
    engine: AsyncEngine, hot: queue.QueueEngine, tmp_path: Path
) -> None:
    """A worker claims runs ahead of its request slots; killed, it sent only some."""
    await submit_jobs(engine, tmp_path, 3, extra="max_attempts: 2\n")
    sent, unsent, retried = await queue.claim(hot, "dead", 3, lease=LEASE, now=T0)
    # The third was tried once and is back in the queue; its last try is claimed, unsent.
    retry = Outcome(
        run_id=retried.run_id, attempt=1, started_at=T0, finished_at=T0, latency_ms=5,
        outcome="retry", http_status=503, error_type="server_error", error_message="busy",
    )  # fmt: skip
    await mark_sent(hot, "dead", sent, retried)
    assert await queue.record(hot, "dead", [retry]) == []
    (again,) = await queue.claim(hot, "dead", 1, lease=LEASE, now=T0)
    assert (again.run_id, again.attempt) == (retried.run_id, 2)
    later = T0 + 2 * LEASE
    taken = await queue.claim(hot, "w", 3, lease=LEASE, now=later)
    # Only the sent try counts; the run at its last attempt, never sent, does not fail.
    assert sorted((r.run_id, r.attempt) for r in taken) == [
        (sent.run_id, 2),
        (unsent.run_id, 1),
        (retried.run_id, 2),
    ]
    await mark_sent(hot, "w", *taken)
    assert await queue.record(hot, "w", [success(r, later) for r in taken]) == []
    states = await rows(engine, "SELECT state, attempts, sent_attempt FROM runs ORDER BY id")
    assert [tuple(r) for r in states] == [
        ("succeeded", 2, 2),
        ("succeeded", 1, 1),
        ("succeeded", 2, 2),
    ]
    attempts = await rows(engine, "SELECT run_id, number, outcome FROM attempts ORDER BY id")
    assert [tuple(a) for a in attempts] == [
        (retried.run_id, 1, "retry"),
        *sorted((r.run_id, r.attempt, "succeeded") for r in taken),
    ]


async def test_concurrent_claimers_never_share_a_run(db_url: str, tmp_path: Path) -> None:
    engines = [db.create_engine_async(db_url) for _ in range(4)]
    try:
        await submit_jobs(engines[0], tmp_path, 200)
        claimed: dict[str, list[int]] = {}

        async def claimer(index: int) -> None:
            owner = f"w{index}"
            claimed[owner] = []
            while batch := await queue.claim(engines[index], owner, 7, lease=LEASE, now=T0):
                claimed[owner] += [r.run_id for r in batch]

        async with anyio.create_task_group() as tg:
            for index in range(4):
                tg.start_soon(claimer, index)
        all_ids = [i for ids in claimed.values() for i in ids]
        assert len(all_ids) == 200 and len(set(all_ids)) == 200
        assert await scalar(engines[0], "SELECT count(*) FROM runs WHERE attempts = 1") == 200
    finally:
        for eng in engines:
            await eng.dispose()


async def test_a_worker_never_takes_back_its_own_runs_and_a_store_tried_again_is_kept_once(
    engine: AsyncEngine, hot: queue.QueueEngine, tmp_path: Path
) -> None:
    """After a database outage a worker's leases may have run out while it still holds
    the results; and a store may have committed before its connection was lost."""
    await submit_jobs(engine, tmp_path, 2)
    a, b = await queue.claim(hot, "w", 2, lease=LEASE, now=T0)
    later = T0 + 2 * LEASE
    assert await queue.claim(hot, "w", 2, lease=LEASE, now=later) == []
    done = success(a, later)
    assert await queue.record(hot, "w", [done]) == []
    # Stored again, as after a lost connection: nothing doubles, the rest is stored.
    assert await queue.record(hot, "w", [done, success(b, later)], again=True) == []
    assert await scalar(engine, "SELECT count(*) FROM attempts") == 2
    states = await rows(engine, "SELECT state, attempts FROM runs ORDER BY id")
    assert [tuple(r) for r in states] == [("succeeded", 1)] * 2


async def test_two_tries_of_a_run_stored_together_only_the_held_one_succeeds(
    engine: AsyncEngine, hot: queue.QueueEngine, tmp_path: Path
) -> None:
    """A stale try and the try that holds the run, in one batch of outcomes."""
    await submit_jobs(engine, tmp_path, 1)
    (first,) = await queue.claim(hot, "a", 1, lease=LEASE, now=T0)
    await mark_sent(hot, "a", first)
    later = T0 + 2 * LEASE
    (second,) = await queue.claim(hot, "b", 1, lease=LEASE, now=later)
    # "b" also got "a"'s late result to store (as one worker holding both tries would).
    stale = replace(success(second, later, "stale"), attempt=first.attempt)
    assert await queue.record(hot, "b", [stale, success(second, later)]) == [stale]
    attempts = await rows(engine, "SELECT number, outcome FROM attempts ORDER BY number")
    assert [tuple(r) for r in attempts] == [(1, "discarded"), (2, "succeeded")]
