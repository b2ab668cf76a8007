"""Rows out: plain values, and the table / CSV / JSON / JSON Lines writers of sql and export.

Values come from either backend's driver; they are made to read the same:
timestamps as ISO 8601 UTC with a ``Z`` (the form SQLite stores), ``Decimal`` as a
number, bytes as hex, JSON documents (PostgreSQL ``jsonb``) as JSON. Writers stream:
each row is written as it is read, except the table, which needs every row to size
its columns.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.text import Text

# rich is imported by the table format alone: `runner --help` reads FORMATS from here.

FORMATS = ("table", "csv", "json", "jsonl")
MIN_WIDTH = 30  # table columns are as wide as their name and longest value, up to this


def utc_text(value: datetime) -> str:
    """An aware datetime as SQLite stores it: ``2026-11-22T02:21:36.383350Z``."""
    if value.tzinfo is None:
        return value.isoformat()
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plain(value: Any) -> Any:
    """A value JSON can carry, the same from SQLite and PostgreSQL."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict | list):
        return value
    return str(value)


def text(value: Any, null: str = "") -> str:
    """A value as one CSV field or table cell."""
    value = plain(value)
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def unique_names(columns: Sequence[str]) -> list[str]:
    """Column names as JSON keys: a repeated name gets ``_2``, ``_3``… (``SELECT 1, 1``)."""
    seen: set[str] = set()
    names = []
    for name in columns:
        unique, n = name, 1
        while unique in seen:
            n += 1
            unique = f"{name}_{n}"
        seen.add(unique)
        names.append(unique)
    return names


def write_csv(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    if columns:
        writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([text(v) for v in row])
        count += 1
    return count


def write_jsonl(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    columns = unique_names(columns)
    count = 0
    for row in rows:
        out.write(json.dumps(dict(zip(columns, map(plain, row), strict=True)), ensure_ascii=False))
        out.write("\n")
        count += 1
    return count


def write_json(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """A JSON array of objects, written one object at a time."""
    columns = unique_names(columns)
    count = 0
    for row in rows:
        out.write(",\n  " if count else "[\n  ")
        out.write(json.dumps(dict(zip(columns, map(plain, row), strict=True)), ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "[]\n")
    return count


def _numeric(values: Iterable[str]) -> bool:
    """Whether every non-NULL cell of a column reads as a number (right-aligned)."""
    seen = False
    for value in values:
        if value == "NULL":
            continue
        try:
            float(value)
        except ValueError:
            return False
        seen = True
    return seen


def _cell(value: Any) -> Text:
    from rich.text import Text

    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, float) and math.isfinite(value) and abs(value) < 1e6:
        return Text(f"{round(value, 6):g}" if value != int(value) else str(value))
    return Text(text(value))


def table_text(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, color: bool, width: int
) -> str:
    """A rich table of every row and a row count; NULL is shown as NULL.

    No column is squeezed narrower than its name or its longest value (up to
    MIN_WIDTH characters): a wide result is wider than the terminal (`less -S`
    reads it), and longer values wrap inside their column.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from runner.richtext import render

    cells = [[_cell(v) for v in row] for row in rows]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    needed = 0
    for index, name in enumerate(columns):
        longest = max(
            (cell.cell_len for row in cells for cell in row[index : index + 1]), default=0
        )
        least = min(max(len(name), longest), MIN_WIDTH)
        needed += least + 3
        right = _numeric(row[index].plain for row in cells) if cells else False
        table.add_column(
            Text(name), justify="right" if right else "left", overflow="fold", min_width=least
        )
    for row in cells:
        table.add_row(*row)
    count = Text(f"({len(cells)} row{'' if len(cells) == 1 else 's'})")
    return render([table, count] if columns else [count], color=color, width=max(width, needed))


def write_rows(
    fmt: str,
    out: TextIO,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    color: bool = False,
    width: int = 120,
) -> int:
    """Write rows in ``fmt`` (one of FORMATS); returns how many were written."""
    if fmt == "csv":
        return write_csv(out, columns, rows)
    if fmt == "json":
        return write_json(out, columns, rows)
    if fmt == "jsonl":
        return write_jsonl(out, columns, rows)
    if fmt == "table":
        data = list(rows)
        out.write(table_text(columns, data, color=color, width=width) + "\n")
        return len(data)
    raise ValueError(f"unknown format {fmt!r}")
