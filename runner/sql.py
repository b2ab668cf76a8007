"""`runner sql`: one statement of a user's SQL, run read-only, printed as a table, CSV or JSON.

The database refuses writes, and on PostgreSQL runs the statement as a role that can
only read (runner.db.readonly, runner.db.reader); this module reads the statement (an
argument, a file, or stdin), bounds it in time, stops it on SIGINT or SIGTERM, and
hands the rows to runner.tabular.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from runner.errors import RunnerError, StoppedError


def read_statement(statement: str | None, path: Path | None) -> str:
    """The statement given as an argument, else read from ``path`` (``-``: stdin)."""
    if path is not None:
        try:
            statement = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise RunnerError(f"cannot read {path}: {reason}") from None
    if statement is None or not statement.strip().rstrip(";").strip():
        raise RunnerError("the SQL statement is empty")
    return statement


DEFAULT_TIMEOUT = 30.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM stops the statement as Ctrl-C does, with a KeyboardInterrupt: psycopg
    answers it with a cancel request to the server, and SQLite's progress handler
    (runner.db.readonly) with stopping the statement. Left unhandled, SIGTERM would end
    the process and leave the PostgreSQL backend running the query."""
    received: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, stop) for s in _SIGNALS} if main else {}
    try:
        yield
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        name = signal.Signals(signum).name
        raise StoppedError(signum, f"stopped by {name}: the statement was cancelled") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_sql(
    url: str,
    statement: str,
    fmt: str,
    out: TextIO,
    *,
    color: bool,
    width: int,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Run ``statement`` read-only, for at most ``timeout`` seconds, and write its rows to
    ``out``; returns the row count."""
    from runner.db.readonly import open_readonly
    from runner.tabular import write_rows

    with _stoppable(), open_readonly(url, timeout=timeout) as ro:
        result = ro.query(statement)
        return write_rows(fmt, out, result.columns, result.rows, color=color, width=width)
