"""Engine setup for SQLite and PostgreSQL, and schema migrations.

URLs are given as users write them (``sqlite:///runner.db``,
``postgresql://user@host/db``) and mapped to the drivers we ship: the stdlib
``sqlite3`` / ``aiosqlite`` for SQLite and psycopg 3 (sync and async, one
driver) for PostgreSQL.

SQLite connections run in WAL mode with a busy timeout, and every transaction
starts with ``BEGIN IMMEDIATE``: writers queue on the database lock up front
instead of failing with "database is locked" when a read upgrades to a write.

A worker on SQLite makes its claims and stores its results through an
:class:`InlineSQLite`: one stdlib ``sqlite3`` connection used on the event loop's own
thread. A claim or a store is a few milliseconds of local work, cheaper to do at once
than to hand to a thread and wait a whole event-loop pass for each of its round trips
(with hundreds of requests in flight, one pass can take tens of milliseconds).

A long run of writes (a big submit) goes through a :func:`bulk_writer`: on SQLite, a
connection that checkpoints the WAL rarely until it goes back to the pool.
"""

from __future__ import annotations

import ast
import logging
import random
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from runner.db.reader import ensure_reader
from runner.errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (most of a second to import) is imported only to migrate, or when the
# database is not at the head revision: every command checks the schema first, and that
# check reads the head from the migration files' text and the database's revision with
# one query (``ensure_schema``).

T = TypeVar("T")
log = logging.getLogger("runner.db")
SQLITE_BUSY_TIMEOUT_MS = 60_000
# An InlineSQLite blocks its event loop at most this long for the lock, then yields.
INLINE_BUSY_TIMEOUT_MS = 5
# A bulk write on SQLite (a big submit, ``bulk_writer``): checkpoint the WAL after 65,536
# pages (256 MiB of 4 KiB pages) rather than SQLite's 1,000, and cache 64 MiB of pages
# (a negative cache_size is KiB) rather than 2 MiB.
BULK_SQLITE_PRAGMAS = {"wal_autocheckpoint": 65_536, "cache_size": -65_536}
_SQLITE_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def parse_url(url: str) -> URL:
    """Validate a database URL and normalise it to a driver-less form."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"invalid database URL {url!r}: expected sqlite:///FILE or postgresql://USER@HOST/DB"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {backend!r}: use sqlite or postgresql")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError("SQLite needs a file: sqlite:///path/to/runner.db")
    return parsed.set(drivername=backend)


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, for messages and logs."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def one_line(text: str) -> str:
    """A message of several lines (a driver's, usually) as one line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def reason(exc: BaseException, url: str | URL | None = None) -> str:
    """Why a database call failed, on one line: the driver's message (without
    SQLAlchemy's wrapping and links), with the URL's password masked."""
    orig = getattr(exc, "orig", None)
    text = one_line(str(orig if orig is not None else exc))
    password = (make_url(url) if isinstance(url, str) else url).password if url else None
    return text.replace(str(password), "***") if password else text


def _driver_url(url: URL, *, asynchronous: bool) -> URL:
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite" if asynchronous else "sqlite+pysqlite")
    return url.set(drivername="postgresql+psycopg")


def _install_sqlite_hooks(
    engine: Engine, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, *, autocheckpoint: bool = True
) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below); the driver must not.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint = 0")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _ensure_sqlite_dir(url: URL) -> None:
    if url.database:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def create_sync_engine(url: str) -> Engine:
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_dir(parsed)
        engine = create_engine(
            _driver_url(parsed, asynchronous=False), poolclass=NullPool, hide_parameters=True
        )
        _install_sqlite_hooks(engine)
        return engine
    return create_engine(
        _driver_url(parsed, asynchronous=False), poolclass=NullPool, hide_parameters=True
    )


def create_engine_async(url: str, *, pool_size: int = 5) -> AsyncEngine:
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_dir(parsed)
        engine = create_async_engine(
            _driver_url(parsed, asynchronous=True), pool_size=pool_size, hide_parameters=True
        )
        _install_sqlite_hooks(engine.sync_engine)
        return engine
    return create_async_engine(
        _driver_url(parsed, asynchronous=True),
        pool_size=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,
    )


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.url.get_backend_name() == "sqlite"


def _locked(exc: OperationalError) -> bool:
    return getattr(exc.orig, "sqlite_errorcode", None) in _SQLITE_BUSY_CODES


class InlineSQLite:
    """One SQLite connection used on the event loop's thread, for a worker's hot path.

    ``await run(fn)`` runs ``fn(connection)`` in one ``BEGIN IMMEDIATE`` transaction,
    synchronously. Another process holding the write lock blocks the loop for at most
    ``INLINE_BUSY_TIMEOUT_MS``; then the transaction (rolled back, so nothing of it is
    kept) is tried again after a short sleep that lets the loop run, for up to the usual
    busy timeout. ``fn`` must only touch the database, so running it again is safe.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
        parsed = parse_url(url)
        if parsed.get_backend_name() != "sqlite":
            raise ConfigError(f"InlineSQLite needs a SQLite URL, not {safe_url(parsed)}")
        self.busy_timeout_s = busy_timeout_s
        # One connection, made on first use and kept: the event loop's thread is the only
        # user (check_same_thread off only because the loop may run in another thread
        # than the one that built this object).
        self.engine = create_engine(
            _driver_url(parsed, asynchronous=False),
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            hide_parameters=True,
        )
        # No checkpoints on this connection: copying the WAL into the database (and its
        # fsync) took up to 250 ms at a commit, all that time with the loop blocked. The
        # worker checkpoints from aiosqlite's thread instead (``checkpoint``).
        _install_sqlite_hooks(self.engine, INLINE_BUSY_TIMEOUT_MS, autocheckpoint=False)

    @classmethod
    def of(
        cls, engine: AsyncEngine, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_MS / 1000
    ) -> InlineSQLite:
        """An inline connection to the same SQLite file as ``engine``."""
        return cls(engine.url.render_as_string(hide_password=False), busy_timeout_s=busy_timeout_s)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        deadline = time.monotonic() + self.busy_timeout_s
        pause = 0.002
        while True:
            try:
                with self.engine.begin() as connection:
                    return fn(connection)
            except OperationalError as exc:
                if not _locked(exc) or time.monotonic() >= deadline:
                    raise
            await anyio.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, 0.05)

    def dispose(self) -> None:
        self.engine.dispose()


async def _driver(conn: AsyncConnection) -> Any:
    """The aiosqlite connection under ``conn``. Statements on it start no transaction:
    SQLAlchemy would BEGIN one (our BEGIN IMMEDIATE, which takes the write lock), and
    SQLite refuses to checkpoint inside one."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None  # an open aiosqlite connection
    return driver


async def _pragma(driver: Any, statement: str) -> int | None:
    """Run ``PRAGMA statement`` on an aiosqlite connection; its value, if it gives one."""
    cursor = await driver.execute(f"PRAGMA {statement}")
    row = await cursor.fetchone()
    await cursor.close()
    return None if row is None else int(row[0])


async def checkpoint(engine: AsyncEngine) -> None:
    """Copy SQLite's write-ahead log into the database file, off the event loop's thread
    (aiosqlite's), without waiting for or blocking other connections (PASSIVE)."""
    async with engine.connect() as conn:
        await _pragma(await _driver(conn), "wal_checkpoint(PASSIVE)")


@asynccontextmanager
async def bulk_writer(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One connection for a long run of write transactions (a submit's chunks); the
    caller begins and commits them (``async with conn.begin()``).

    On SQLite the connection checkpoints the WAL rarely and caches more pages while it
    is lent (``BULK_SQLITE_PRAGMAS``). With SQLite's default checkpoint every 1,000
    pages, each commit of a big submit copied every page it had touched into the
    database file (and synced both files): the ``jobs.request_hash`` index takes its
    keys in random order, so each chunk's keys land on thousands of its pages, copied
    again at every chunk. The WAL may now grow to about 270 MiB during the writes; it
    is checkpointed (PASSIVE) when they end, and the connection's own settings are
    restored before it goes back to the pool, so the engine's other users keep
    SQLite's defaults (if they cannot be restored, the connection is closed instead of
    pooled). On PostgreSQL this is just a connection.
    """
    async with engine.connect() as conn:
        if not is_sqlite(engine):
            yield conn
            return
        driver = await _driver(conn)
        before = {name: await _pragma(driver, name) for name in BULK_SQLITE_PRAGMAS}
        try:
            for name, value in BULK_SQLITE_PRAGMAS.items():
                await _pragma(driver, f"{name} = {value}")
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                await _end_bulk(conn, driver, before)


async def _end_bulk(conn: AsyncConnection, driver: Any, settings: dict[str, int | None]) -> None:
    """Checkpoint what a bulk writer wrote and give its connection back its settings."""
    try:
        if conn.in_transaction():
            await conn.rollback()
        await _pragma(driver, "wal_checkpoint(PASSIVE)")
        for name, value in settings.items():
            await _pragma(driver, f"{name} = {value}")
    except Exception as exc:
        log.warning("closing a bulk writer's connection: %s", reason(exc))
        await conn.invalidate()


# ---------------------------------------------------------------- migrations


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("runner.migrations")))
    if url is not None:
        config.attributes["database_url"] = url
    return config


# ``revision: str = "0011"`` and ``down_revision: str | None = "0010"`` in a migration file.
_REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=\s*(.+?)\s*$", re.MULTILINE)


def _head_from_files() -> str | None:
    """The head revision read from the migration files' text, without Alembic; None when
    the files do not name exactly one head that way (then Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    versions = resources.files("runner.migrations") / "versions"
    for entry in versions.iterdir():
        if not entry.name.endswith(".py") or entry.name.startswith("_"):
            continue
        text = entry.read_text("utf-8")
        found = {m[1]: m[2] for m in _REVISION_LINE.finditer(text)}
        try:
            revision = ast.literal_eval(found["revision"])
            down = ast.literal_eval(found.get("down_revision", "None"))
        except (KeyError, SyntaxError, ValueError):
            return None
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        parents.update([down] if isinstance(down, str) else down or ())
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def head_revision() -> str:
    """The revision this seed-runner's schema is at (the migrations' single head)."""
    head = _head_from_files()
    if head is None:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _recorded_revision(url: str) -> str | None:
    """The revision the database records (alembic_version), read with one query and no
    lock; None when there is none, or it cannot be read that way."""
    parsed = parse_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            path = Path(parsed.database or "").expanduser()
            if not path.is_file():
                return None
            with closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)) as conn:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        else:
            engine = create_sync_engine(url)
            try:
                with engine.connect() as connection:
                    row = connection.exec_driver_sql(
                        "SELECT version_num FROM alembic_version"
                    ).fetchone()
            finally:
                engine.dispose()
    except (sqlite3.Error, SQLAlchemyError):
        return None  # no schema, or no database: the full check says which, and why
    return str(row[0]) if row else None


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str]:
    """Run migrations up to ``revision``; returns (revision before, revision after).

    At the head revision on PostgreSQL, also sets up the role `runner sql` reads as
    (runner.db.reader), in the same transaction.
    """
    from alembic import command

    engine = create_sync_engine(url)
    try:
        with engine.begin() as connection:
            before = current_revision(connection)
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            after = current_revision(connection)
            if connection.dialect.name == "postgresql" and after == head_revision():
                missing = ensure_reader(connection)
                if missing:
                    log.warning("%s", missing)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"migration failed on {safe_url(url)}: {reason(exc, url)}") from exc
    finally:
        engine.dispose()
    return before, after or ""


@contextmanager
def _connect_sync(url: str) -> Iterator[Connection]:
    engine = create_sync_engine(url)
    try:
        with engine.begin() as connection:
            yield connection
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot open the database {safe_url(url)}: {reason(exc, url)}"
        ) from exc
    finally:
        engine.dispose()


def require_database(url: str) -> None:
    """Refuse a SQLite file that does not exist, for a command that only reads: opening
    it would create an empty database where a mistyped path was meant."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    path = Path(parsed.database or "").expanduser()
    if not path.is_file():
        raise DatabaseError(
            f"no database at {path}: check --db or RUNNER_DATABASE_URL (this command "
            "never creates one; `runner submit` does)"
        )


def ensure_schema(url: str, *, create: bool = True) -> None:
    """Make sure the database is at the current schema before any command uses it.

    A new SQLite file is created and migrated on first use, so the default needs no
    setup step; its check and migration run under the write lock, so workers
    starting together don't race. With ``create`` false (commands that only read) a
    missing SQLite file is an error instead. PostgreSQL and existing databases that
    are behind must be upgraded explicitly with ``runner db upgrade``.
    """
    if not create:
        require_database(url)
    head = head_revision()
    if _recorded_revision(url) == head:
        return
    parsed = parse_url(url)
    with _connect_sync(url) as connection:
        current = current_revision(connection)
        if current == head:
            return
        if current is None and parsed.get_backend_name() == "sqlite":
            from alembic import command

            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            return
    if current is None:
        raise DatabaseError(
            f"the database {safe_url(url)} has no seed-runner schema yet; "
            "run `runner db upgrade` first"
        )
    raise DatabaseError(
        f"the database {safe_url(url)} is at schema revision {current}, this seed-runner "
        f"needs {head}; run `runner db upgrade`"
    )
