"""Shared fixtures: every database test runs on SQLite and on PostgreSQL, each on its own DB.

PostgreSQL comes from RUNNER_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test),
an admin connection used to create one database per test from a migrated template.
Without it the PostgreSQL half is skipped with the reason, except under CI=true,
where a missing or unreachable PostgreSQL fails the run instead.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.db import engine as db

PG_ENV = "RUNNER_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the developer's RUNNER_* settings, runner.toml or API keys."""
    for name in list(os.environ):
        if (name.startswith("RUNNER_") and name != PG_ENV) or name.startswith("OPENAI_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class PostgresServer:
    """Creates throwaway databases on the test PostgreSQL server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url).set(drivername="postgresql+psycopg")
        self.engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.template: str | None = None

    def url(self, name: str) -> str:
        return self.admin_url.set(drivername="postgresql", database=name).render_as_string(
            hide_password=False
        )

    def create(self, *, migrated: bool) -> str:
        if migrated and self.template is None:
            self.template = f"seedrunner_tmpl_{uuid.uuid4().hex[:8]}"
            with self.engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.template}"'))
            db.upgrade(self.url(self.template))
        name = f"seedrunner_t_{uuid.uuid4().hex[:12]}"
        template = f' TEMPLATE "{self.template}"' if migrated else ""
        with self.engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
        return self.url(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        if self.template:
            self.drop(self.url(self.template))
        self.engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    url = os.environ.get(PG_ENV)
    if not url:
        yield None
        return
    server = PostgresServer(url)
    try:
        with server.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        server.engine.dispose()
        if _in_ci():
            pytest.fail(f"CI=true but PostgreSQL at {db.safe_url(url)} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {db.safe_url(url)} is unreachable: {exc}")
    yield server
    server.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per session; each test gets a copy (a copy takes
    milliseconds, running every migration again about half a second)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "runner.db"
    db.ensure_schema(f"sqlite:///{path}")
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    assert not leftovers, f"the template left {leftovers} beside it: copy them too"
    return path


def _backend_url(
    request: pytest.FixtureRequest, postgres: PostgresServer | None, tmp_path: Path, migrated: bool
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "runner.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    if postgres is None:
        if _in_ci():
            pytest.fail(f"CI=true but {PG_ENV} is not set: the PostgreSQL tests must run in CI")
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1/test)")
    url = postgres.create(migrated=migrated)
    try:
        yield url
    finally:
        postgres.drop(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest, postgres: PostgresServer | None, tmp_path: Path
) -> Iterator[str]:
    """A migrated database of each backend, new for each test."""
    yield from _backend_url(request, postgres, tmp_path, migrated=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(
    request: pytest.FixtureRequest, postgres: PostgresServer | None, tmp_path: Path
) -> Iterator[str]:
    """An empty database (no schema) of each backend, new for each test."""
    yield from _backend_url(request, postgres, tmp_path, migrated=False)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = db.create_engine_async(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()
