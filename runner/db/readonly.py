"""Read-only database connections for users' SQL and exports: the database refuses writes.

Nothing here inspects SQL text. Each backend is opened so that the database itself
refuses anything but reading:

- SQLite: the file is opened read-only (``mode=ro`` URI) with ``PRAGMA query_only``;
  an authorizer lets SQLite prepare only reads (SELECT, reading tables and views,
  functions, recursive CTEs, and PRAGMAs that report), so INSERT, CREATE (even of a
  temporary table), ATTACH, ``VACUUM INTO``, ``PRAGMA writable_schema = ON``… fail with
  "not authorized"; no other database can be attached (limit 0). Python's ``sqlite3``
  runs one statement per call.
- PostgreSQL: a session with ``default_transaction_read_only`` in a ``READ ONLY``
  transaction that is always rolled back; statements go through the extended query
  protocol, which runs one statement per call. Sessions use the UTC time zone.

All statements of one connection read one snapshot (a read transaction that is never
committed), so an export's checks and its rows agree. Rows are plain DB-API tuples;
``stream`` reads a result in chunks (a server-side cursor on PostgreSQL), so a big
export never sits in memory.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from sqlalchemy.engine import URL

from runner.db.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    parse_url,
    reason,
    require_database,
    safe_url,
)
from runner.errors import DatabaseError, QueryError

STREAM_CHUNK = 1000

# PRAGMAs that only report, with or without an argument (table_info(runs), ...).
_REPORTING_PRAGMAS = frozenset(
    {
        "collation_list",
        "compile_options",
        "database_list",
        "foreign_key_check",
        "foreign_key_list",
        "function_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "module_list",
        "pragma_list",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
# PRAGMAs that set something when given a value: only reading them is allowed.
_SETTING_PRAGMAS = frozenset(
    {
        "application_id",
        "auto_vacuum",
        "busy_timeout",
        "cache_size",
        "data_version",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "journal_mode",
        "page_count",
        "page_size",
        "query_only",
        "schema_version",
        "synchronous",
        "user_version",
        "writable_schema",
    }
)
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema"})
_READING = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def sqlite_authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None
) -> int:
    """SQLite's authorizer callback: allow reading, deny everything else."""
    if action in _READING:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA_TABLES:
        # SQLite asks this when a table-valued function (json_each, pragma_table_info)
        # is first used. A real UPDATE of the schema table is refused by SQLite itself
        # (unless writable_schema is on, which is denied below), and the file is read-only.
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
        name = arg1.lower()
        if name in _REPORTING_PRAGMAS or (name in _SETTING_PRAGMAS and arg2 is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


@dataclass(frozen=True)
class Result:
    """A statement's column names (empty if it returns no rows) and its rows, once."""

    columns: list[str]
    rows: Iterator[Sequence[Any]]


class ReadOnly(Protocol):
    """A read-only connection; ``placeholder`` is the driver's positional parameter mark."""

    dialect: str
    placeholder: str

    def query(self, sql: str) -> Result:
        """Run one statement of a user's SQL."""
        ...

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one of our SELECTs, reading its rows in chunks."""
        ...


def _sqlite_message(exc: sqlite3.Error) -> str:
    message = str(exc)
    if message == "not authorized":
        message += " (this connection is read-only: SELECT, WITH and reporting PRAGMAs only)"
    return message


class _SQLite:
    dialect = "sqlite"
    placeholder = "?"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _run(self, sql: str, params: Sequence[Any]) -> Result:
        try:
            cursor = self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise QueryError(_sqlite_message(exc)) from None
        columns = [d[0] for d in cursor.description or ()]
        return Result(columns, self._rows(cursor))

    def _rows(self, cursor: sqlite3.Cursor) -> Iterator[Sequence[Any]]:
        try:
            while chunk := cursor.fetchmany(STREAM_CHUNK):
                yield from chunk
        except sqlite3.Error as exc:
            raise QueryError(_sqlite_message(exc)) from None
        finally:
            with contextlib.suppress(Exception):  # the connection may be closed already
                cursor.close()

    def query(self, sql: str) -> Result:
        return self._run(sql, ())

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self._run(sql, params)


def _pg_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    message = diag.message_primary or str(exc).strip().splitlines()[0]
    if diag.statement_position:
        message += f" (at character {diag.statement_position})"
    if diag.message_hint:
        message += f"; hint: {diag.message_hint}"
    return message


class _Postgres:
    dialect = "postgresql"
    placeholder = "%s"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._cursors = 0

    def query(self, sql: str) -> Result:
        cursor = self._conn.cursor()
        try:
            # prepare=True: the extended query protocol, one statement and no more.
            # The whole result is held by libpq, as psql does; exports use stream().
            cursor.execute(sql.encode(), prepare=True)
        except psycopg.Error as exc:
            raise QueryError(_pg_message(exc)) from None
        columns = [d.name for d in cursor.description or ()]
        return Result(columns, self._rows(cursor) if cursor.description else iter(()))

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Result:
        self._cursors += 1
        cursor = self._conn.cursor(name=f"runner_stream_{self._cursors}")
        cursor.itersize = STREAM_CHUNK
        try:
            cursor.execute(sql.encode(), params)
        except psycopg.Error as exc:
            raise QueryError(_pg_message(exc)) from None
        return Result([d.name for d in cursor.description or ()], self._rows(cursor))

    def _rows(self, cursor: psycopg.Cursor[Any]) -> Iterator[Sequence[Any]]:
        try:
            while chunk := cursor.fetchmany(STREAM_CHUNK):
                yield from chunk
        except psycopg.Error as exc:
            raise QueryError(_pg_message(exc)) from None
        finally:
            with contextlib.suppress(Exception):  # the connection may be closed already
                cursor.close()


def _sqlite_path(url: URL) -> Path:
    require_database(url.render_as_string(hide_password=False))
    return Path(url.database or "").expanduser().resolve()


@contextmanager
def _open_sqlite(url: URL) -> Iterator[ReadOnly]:
    path = _sqlite_path(url)
    try:
        conn = sqlite3.connect(
            f"{path.as_uri()}?mode=ro",
            uri=True,
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open {path} read-only: {exc}") from None
    try:
        try:
            conn.execute("PRAGMA query_only = ON")
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            # One read transaction for the connection's life: every statement sees the
            # same snapshot (an export's checks and its rows agree). Closing rolls it back.
            conn.execute("BEGIN DEFERRED")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot read {path} as a SQLite database: {exc}") from None
        conn.set_authorizer(sqlite_authorizer)
        yield _SQLite(conn)
    finally:
        conn.close()


@contextmanager
def _open_postgres(url: URL) -> Iterator[ReadOnly]:
    options = " ".join(
        part
        for part in (
            str(url.query.get("options", "")),
            "-c default_transaction_read_only=on -c TimeZone=UTC",
        )
        if part
    )
    conninfo = url.set(query={k: v for k, v in url.query.items() if k != "options"})
    try:
        conn = psycopg.connect(
            conninfo.render_as_string(hide_password=False), options=options, autocommit=False
        )
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot open the database {safe_url(url)}: {reason(exc, url)}"
        ) from None
    try:
        conn.read_only = True  # every transaction starts with BEGIN READ ONLY
        # One snapshot for every statement: an export's checks and its rows agree.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        yield _Postgres(conn)
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


@contextmanager
def open_readonly(url: str) -> Iterator[ReadOnly]:
    """A read-only connection to the database at ``url`` (sqlite:/// or postgresql://)."""
    parsed = parse_url(url)
    opener = _open_sqlite if parsed.get_backend_name() == "sqlite" else _open_postgres
    with opener(parsed) as conn:
        yield conn
