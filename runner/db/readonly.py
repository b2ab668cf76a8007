"""Read-only database connections for users' SQL and exports: the database refuses writes.

Nothing here inspects SQL text. Each backend is opened so that the database itself
refuses anything but reading:

- SQLite: the file is opened read-only (``mode=ro`` URI) with ``PRAGMA query_only``;
  an authorizer lets SQLite prepare only reads (SELECT, reading tables and views,
  functions, recursive CTEs, and PRAGMAs that report), so INSERT, CREATE (even of a
  temporary table), ATTACH, ``VACUUM INTO``, ``PRAGMA writable_schema = ON``… fail with
  "not authorized"; no other database can be attached (limit 0). Python's ``sqlite3``
  runs one statement per call. With a timeout, a progress handler stops a statement
  that runs longer (and lets Python see Ctrl-C, which SQLite's C loop would not).
- PostgreSQL: a session with ``default_transaction_read_only`` in a ``READ ONLY``
  transaction that is always rolled back. A user's statement (``query``) is only
  parsed with the URL's role (the extended query protocol: one statement, which must
  return rows) and runs inside ``runner_sql()`` as the powerless role
  ``seed_runner_reader`` (runner.db.reader explains why that is a sandbox). With a
  timeout, ``statement_timeout``, ``lock_timeout`` and
  ``idle_in_transaction_session_timeout`` bound it, and the server drops the query of
  a client that went away (``client_connection_check_interval``, PostgreSQL 14+).
  psycopg sends a cancel request when Ctrl-C interrupts a query. Sessions use UTC.

All statements of one connection read one snapshot (a read transaction that is never
committed), so an export's checks and its rows agree. Rows are plain DB-API tuples;
``stream`` reads a result in chunks (a server-side cursor on PostgreSQL), so a big
export never sits in memory.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import pq
from sqlalchemy.engine import URL

from runner.db.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    parse_url,
    reason,
    require_database,
    safe_url,
)
from runner.db.reader import FUNCTION, POWERFUL, READER
from runner.errors import DatabaseError, QueryError

STREAM_CHUNK = 1000
# SQLite calls the progress handler every this many virtual machine instructions.
SQLITE_PROGRESS_STEPS = 10_000
# A lock `runner sql` waits for is held by a migration: never wait long behind it.
MAX_LOCK_TIMEOUT_S = 5.0

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


def _timed_out(timeout: float) -> QueryError:
    return QueryError(
        f"the statement ran longer than {timeout:g} s and was stopped "
        "(runner sql --timeout, RUNNER_SQL_TIMEOUT)"
    )


class _SQLite:
    dialect = "sqlite"
    placeholder = "?"

    def __init__(self, conn: sqlite3.Connection, timeout: float | None) -> None:
        self._conn = conn
        self._timeout = timeout
        self._deadline = float("inf")
        conn.set_progress_handler(self._progress, SQLITE_PROGRESS_STEPS)

    def _progress(self) -> bool:
        # Python runs signal handlers here too: a KeyboardInterrupt raised in this
        # callback makes sqlite3 stop the statement ("interrupted"), as True does.
        return time.monotonic() > self._deadline

    def _error(self, exc: sqlite3.Error) -> BaseException:
        if str(exc) == "interrupted":
            if self._timeout is not None and time.monotonic() > self._deadline:
                return _timed_out(self._timeout)
            return KeyboardInterrupt()  # a signal stopped it inside the progress handler
        return QueryError(_sqlite_message(exc))

    def _run(self, sql: str, params: Sequence[Any]) -> Result:
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout
        try:
            cursor = self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        columns = [d[0] for d in cursor.description or ()]
        return Result(columns, self._rows(cursor))

    def _rows(self, cursor: sqlite3.Cursor) -> Iterator[Sequence[Any]]:
        try:
            while chunk := cursor.fetchmany(STREAM_CHUNK):
                yield from chunk
        except sqlite3.Error as exc:
            raise self._error(exc) from None
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


# PL/pgSQL runs runner_sql's query read-only: how PostgreSQL says it refused one.
_NOT_READ_ONLY = re.compile(r"^(.+) is not allowed in a non-volatile function$")
# The reader function, if it is there, where it is, and whether it is still a sandbox.
_READER_CHECK = f"""
SELECT n.nspname, p.prosecdef AND NOT {POWERFUL}
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_roles r ON r.oid = p.proowner
WHERE p.oid = to_regprocedure('{FUNCTION}(text)')
"""
# Each result column's type as SQL, and whether it is a pseudo-type (void, record...).
_COLUMN_TYPES = """
SELECT format_type(m.oid, m.mod), t.typtype = 'p'
FROM unnest(%s::oid[], %s::int4[]) WITH ORDINALITY AS m(oid, mod, n)
JOIN pg_type t ON t.oid = m.oid
ORDER BY m.n
"""


class _Postgres:
    dialect = "postgresql"
    placeholder = "%s"

    def __init__(self, conn: psycopg.Connection[Any], timeout: float | None) -> None:
        self._conn = conn
        self._timeout = timeout
        self._cursors = 0

    def query(self, sql: str) -> Result:
        """Run a user's statement as ``seed_runner_reader`` inside ``runner_sql()``."""
        function = self._reader()
        columns = self._columns(sql)
        # The result's columns, declared as the statement's own types (c1, c2...: names
        # may repeat); the statement itself is a parameter, never part of this text.
        declared = ", ".join(f"c{i} {kind}" for i, (_, kind) in enumerate(columns, 1))
        wrapper = f"SELECT * FROM {function}(%s::text) AS t({declared.replace('%', '%%')})"
        cursor = self._conn.cursor()
        try:
            cursor.execute(wrapper.encode(), (sql,))
        except psycopg.Error as exc:
            raise QueryError(self._message(exc)) from None
        # The whole result is held by libpq, as psql does; exports use stream().
        return Result([name for name, _ in columns], self._rows(cursor))

    def _reader(self) -> str:
        try:
            found = self._conn.execute(_READER_CHECK).fetchone()
        except psycopg.Error as exc:
            raise QueryError(self._message(exc)) from None
        if found is None:
            raise DatabaseError(
                f"this database has no {FUNCTION}() function, which `runner sql` runs "
                f"users' SQL through as the role {READER}: run `runner db upgrade` "
                "(the first time as a superuser)"
            )
        schema, safe = found
        if not safe:
            raise DatabaseError(
                f"{FUNCTION}() must be SECURITY DEFINER and owned by a role with no "
                f"attributes and no memberships ({READER}): run `runner db upgrade` as a "
                "superuser, and grant that role nothing"
            )
        return f'"{schema.replace(chr(34), chr(34) * 2)}".{FUNCTION}'

    def _columns(self, sql: str) -> list[tuple[str, str]]:
        """The names and types of the statement's result, known by parsing it only.

        The extended query protocol parses one statement and refuses more. Parsing runs
        nothing: the statement is never executed outside runner_sql().
        """
        encoding = self._conn.info.encoding
        pgconn = self._conn.pgconn
        described = pgconn.prepare(b"", sql.encode(encoding))
        if described.status == pq.ExecStatus.COMMAND_OK:
            described = pgconn.describe_prepared(b"")
        if described.status != pq.ExecStatus.COMMAND_OK:
            error = psycopg.errors.error_from_result(described, encoding=encoding)
            raise QueryError(self._message(error))
        if described.nfields == 0:
            raise QueryError(
                "runner sql runs one statement that returns rows "
                "(SELECT, WITH, VALUES or TABLE) and reads only"
            )
        names = [(described.fname(i) or b"?").decode(encoding) for i in range(described.nfields)]
        oids = [described.ftype(i) for i in range(described.nfields)]
        mods = [described.fmod(i) for i in range(described.nfields)]
        kinds = self._conn.execute(_COLUMN_TYPES, (oids, mods)).fetchall()
        for name, (kind, pseudo) in zip(names, kinds, strict=True):
            if pseudo:
                raise QueryError(
                    f"column {name!r} is of the pseudo-type {kind}, which runner sql "
                    "cannot return: cast it to text (e.g. pg_sleep(1)::text)"
                )
        return [(name, kind) for name, (kind, _) in zip(names, kinds, strict=True)]

    def _message(self, exc: psycopg.Error) -> str:
        if self._timeout is not None:
            if isinstance(exc, psycopg.errors.LockNotAvailable):
                waited = min(self._timeout, MAX_LOCK_TIMEOUT_S)
                return (
                    f"the statement waited longer than {waited:g} s for a lock "
                    "(held by a migration?) and was stopped"
                )
            if isinstance(exc, psycopg.errors.QueryCanceled) and "timeout" in str(exc):
                return _timed_out(self._timeout).message
        message = _pg_message(exc)
        if refused := _NOT_READ_ONLY.match(message):
            what = "a WITH that writes" if refused[1] == "SELECT" else refused[1]
            return f"{what} is not allowed: runner sql only reads"
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            message += (
                f" (runner sql runs as the role {READER}, which may only read "
                "seed-runner's tables and views)"
            )
        return message

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
def _open_sqlite(url: URL, timeout: float | None) -> Iterator[ReadOnly]:
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
        yield _SQLite(conn, timeout)
    finally:
        conn.close()


@contextmanager
def _open_postgres(url: URL, timeout: float | None) -> Iterator[ReadOnly]:
    options = " ".join(
        part
        for part in (
            str(url.query.get("options", "")),
            "-c default_transaction_read_only=on -c TimeZone=UTC",
            _timeouts(timeout),
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
        if conn.info.server_version >= 140000:
            # The server stops the query of a client that died (SIGKILL) within a second.
            conn.execute("SET client_connection_check_interval = 1000")
        yield _Postgres(conn, timeout)
    finally:
        try:
            with contextlib.suppress(psycopg.Error):  # the server may have ended it
                conn.rollback()
        finally:
            conn.close()


def _timeouts(timeout: float | None) -> str:
    """PostgreSQL settings that bound each statement, lock wait and idle transaction."""
    if timeout is None:
        return ""
    ms = max(1, round(timeout * 1000))
    lock_ms = max(1, round(min(timeout, MAX_LOCK_TIMEOUT_S) * 1000))
    return (
        f"-c statement_timeout={ms} -c lock_timeout={lock_ms} "
        f"-c idle_in_transaction_session_timeout={ms}"
    )


@contextmanager
def open_readonly(url: str, *, timeout: float | None = None) -> Iterator[ReadOnly]:
    """A read-only connection to the database at ``url`` (sqlite:/// or postgresql://).

    ``timeout``: seconds any one statement may run (and, on PostgreSQL, at most
    ``MAX_LOCK_TIMEOUT_S`` of them waiting for a lock) before it is stopped.
    """
    parsed = parse_url(url)
    opener = _open_sqlite if parsed.get_backend_name() == "sqlite" else _open_postgres
    with opener(parsed, timeout) as conn:
        yield conn
