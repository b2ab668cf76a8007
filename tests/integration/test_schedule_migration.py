"""Migration 0004 on a database that already holds runs: nothing is lost, on both backends.

0004 adds ``rounds.schedule_id`` and ``rounds.scheduled_for`` with plain ALTER TABLE (a
batch-mode copy of ``rounds`` on SQLite would cascade-delete its runs), and it goes back
down cleanly.
"""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from runner.db import engine as db
from tests.integration.test_replay_migration import ROWS


def test_0004_keeps_rounds_runs_and_attempts_and_downgrades(empty_db_url: str) -> None:
    assert db.upgrade(empty_db_url, "0003") == (None, "0003")
    engine = db.create_sync_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            for sql in ROWS:
                conn.execute(text(sql))
        assert db.upgrade(empty_db_url, "0004") == ("0003", "0004")
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM attempts")) == 1
            assert conn.execute(text("SELECT output FROM runs")).all() == [("hello",)]
            rnd = conn.execute(text("SELECT trigger, schedule_id, scheduled_for FROM rounds"))
            assert rnd.all() == [("submit", None, None)]
            assert conn.scalar(text("SELECT count(*) FROM schedules")) == 0
            assert conn.scalar(text("SELECT count(*) FROM drift_reports")) == 0
        with engine.begin() as conn:
            config = db.alembic_config(empty_db_url)
            config.attributes["connection"] = conn
            command.downgrade(config, "0003")
        with engine.connect() as conn:
            assert db.current_revision(conn) == "0003"
            assert conn.scalar(text("SELECT count(*) FROM attempts")) == 1
            assert conn.execute(text("SELECT * FROM rounds")).keys() == [
                "id", "batch_id", "number", "trigger", "created_at", "endpoint", "model",
                "selection", "reuse",
            ]  # fmt: skip
    finally:
        engine.dispose()
