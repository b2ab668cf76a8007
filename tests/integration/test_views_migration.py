"""The views of migration 0005 on both backends: created, dropped on downgrade, ignored by
the models-vs-migrations check (views are not in the SQLAlchemy metadata); and
docs/schema.md describes every table, view and column the migrations create."""

from __future__ import annotations

import re
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from runner.db import engine as db
from runner.db.models import Base

VIEWS = {"run_results", "fingerprint_history", "round_summary"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema.md"


def _views(url: str) -> set[str]:
    engine = db.create_sync_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_view_names()) & VIEWS
    finally:
        engine.dispose()


def test_views_come_and_go_with_their_migration(empty_db_url: str) -> None:
    db.upgrade(empty_db_url)
    assert _views(empty_db_url) == VIEWS
    engine = db.create_sync_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        with engine.begin() as conn:
            config = db.alembic_config(empty_db_url)
            config.attributes["connection"] = conn
            command.downgrade(config, "0004")
            assert db.current_revision(conn) == "0004"
    finally:
        engine.dispose()
    assert _views(empty_db_url) == set()
    assert db.upgrade(empty_db_url) == ("0004", db.head_revision())
    assert _views(empty_db_url) == VIEWS


def documented_columns() -> dict[str, set[str]]:
    """docs/schema.md: for each `## name` / `### name` section, the columns its table lists."""
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^#{2,3} (\w+)(?: \(\w+\))?$", line)  # "### model_prices (table)"
        if heading:
            current = sections.setdefault(heading.group(1), set())
        elif current is not None and line.startswith("| ") and not line.startswith("| column"):
            current.update(name.strip() for name in line.split("|")[1].split(","))
    return sections


def test_docs_describe_every_table_view_and_column(db_url: str) -> None:
    documented = documented_columns()
    engine = db.create_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            names = set(inspector.get_table_names()) - {"alembic_version"}
            names |= set(inspector.get_view_names())
            for name in sorted(names):
                assert name in documented, f"docs/schema.md has no section for {name}"
                columns = {c["name"] for c in inspector.get_columns(name)}
                missing = columns - documented[name]
                assert not missing, f"docs/schema.md does not describe {name}.{sorted(missing)}"
                stale = documented[name] - columns
                assert not stale, f"docs/schema.md describes columns {name} lacks: {stale}"
    finally:
        engine.dispose()


def _columns(url: str, view: str) -> list[str]:
    engine = db.create_sync_engine(url)
    try:
        with engine.connect() as conn:
            return [c["name"] for c in inspect(conn).get_columns(view)]
    finally:
        engine.dispose()


def test_0007_adds_error_body_to_run_results_and_takes_it_back(empty_db_url: str) -> None:
    assert db.upgrade(empty_db_url, "0006") == (None, "0006")
    before = _columns(empty_db_url, "run_results")
    assert db.upgrade(empty_db_url, "0007") == ("0006", "0007")
    # Added at the end, so `SELECT *` users see the old columns where they were.
    assert _columns(empty_db_url, "run_results") == [*before, "error_body"]
    engine = db.create_sync_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            config = db.alembic_config(empty_db_url)
            config.attributes["connection"] = conn
            command.downgrade(config, "0006")
    finally:
        engine.dispose()
    assert _columns(empty_db_url, "run_results") == before
    assert _views(empty_db_url) == VIEWS  # fingerprint_history came back with it
