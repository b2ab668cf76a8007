"""Migration 0003 on a database that already holds runs: nothing is lost, on both backends.

0003 adds columns to ``runs`` with plain ALTER TABLE. (A batch-mode copy of ``runs`` on
SQLite would drop the old table, and with foreign keys on that DROP cascades to
``attempts``: this test is what catches it.)
"""

from __future__ import annotations

from sqlalchemy import text

from runner.db import engine as db

ROWS = [
    "INSERT INTO batches (id, name, source_path, source_format, source_sha256, submitted_at, "
    "job_count) VALUES (1, 'b', 'b.yaml', 'yaml', '', '2026-01-01T00:00:00.000000Z', 1)",
    "INSERT INTO jobs (id, batch_id, key, endpoint, model, body, request_hash, seed, "
    "source_line) VALUES (1, 1, 'k', 'local', 'm', '{}', 'v1:x', 1, 1)",
    "INSERT INTO rounds (id, batch_id, number, trigger, created_at) "
    "VALUES (1, 1, 1, 'submit', '2026-01-01T00:00:00.000000Z')",
    "INSERT INTO runs (id, round_id, job_id, state, attempts, max_attempts, available_at, "
    "output) VALUES (1, 1, 1, 'succeeded', 1, 5, '2026-01-01T00:00:00.000000Z', 'hello')",
    "INSERT INTO attempts (run_id, number, worker, started_at, latency_ms, outcome) "
    "VALUES (1, 1, 'w', '2026-01-01T00:00:00.000000Z', 1.5, 'succeeded')",
]


def test_0003_keeps_existing_runs_and_attempts(empty_db_url: str) -> None:
    assert db.upgrade(empty_db_url, "0002") == (None, "0002")
    engine = db.create_sync_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            for sql in ROWS:
                conn.execute(text(sql))
        assert db.upgrade(empty_db_url, "0003") == ("0002", "0003")
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM attempts")) == 1
            run = conn.execute(
                text("SELECT output, request_hash, reused_from_run_id FROM runs")
            ).one()
            assert tuple(run) == ("hello", None, None)
            rnd = conn.execute(text("SELECT endpoint, model, selection, reuse FROM rounds")).one()
            assert tuple(rnd) == (None, None, None, False)
    finally:
        engine.dispose()
