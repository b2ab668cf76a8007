"""`runner sql`: one statement of a user's SQL, run read-only, printed as a table, CSV or JSON.

The database refuses writes (runner.db.readonly); this module only reads the
statement (an argument, a file, or stdin) and hands the rows to runner.tabular.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from runner.db.readonly import open_readonly
from runner.errors import RunnerError
from runner.tabular import write_rows


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


def run_sql(url: str, statement: str, fmt: str, out: TextIO, *, color: bool, width: int) -> int:
    """Run ``statement`` read-only and write its rows to ``out``; returns the row count."""
    with open_readonly(url) as ro:
        result = ro.query(statement)
        return write_rows(fmt, out, result.columns, result.rows, color=color, width=width)
