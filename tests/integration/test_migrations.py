"""Alembic owns the schema: the same migrations on both backends, matching the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from runner.db import engine as db
from runner.db.models import Base
from runner.errors import DatabaseError

TABLES = {"batches", "jobs", "rounds", "runs", "attempts", "workers", "alembic_version"}


def test_upgrade_head_then_models_match_migrations(empty_db_url: str) -> None:
    before, after = db.upgrade(empty_db_url)
    assert before is None and after == db.head_revision()
    engine = db.create_sync_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= TABLES
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()
    assert db.upgrade(empty_db_url) == (after, after)  # idempotent


def test_ensure_schema_creates_sqlite_but_asks_for_upgrade_on_postgres(empty_db_url: str) -> None:
    if empty_db_url.startswith("sqlite"):
        db.ensure_schema(empty_db_url)
        db.ensure_schema(empty_db_url)
        engine = db.create_sync_engine(empty_db_url)
        with engine.connect() as conn:
            assert db.current_revision(conn) == db.head_revision()
        engine.dispose()
    else:
        with pytest.raises(DatabaseError, match="run `runner db upgrade` first"):
            db.ensure_schema(empty_db_url)


def test_the_head_read_from_the_migration_files_is_alembics() -> None:
    """Commands check the schema against the head read from the files' text (importing
    Alembic costs most of a second): it must be the head Alembic itself finds."""
    from alembic.script import ScriptDirectory

    alembic_head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    assert db._head_from_files() == alembic_head == db.head_revision()
