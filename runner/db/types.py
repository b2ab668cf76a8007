"""Column types that read the same on SQLite and PostgreSQL.

Timestamps are timezone-aware UTC datetimes in Python. On PostgreSQL they are
``timestamptz``; on SQLite they are stored as fixed-width ISO 8601 text
(``2026-11-22T02:09:46.123456Z``), which sorts correctly as text and which
SQLite's date functions, ``sqlite3`` and Datasette read as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

SQLITE_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02dT%(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06dZ"
)
SQLITE_REGEXP = r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)\.(\d+)Z"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on both backends."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(
                sqlite.DATETIME(  # type: ignore[no-untyped-call]
                    storage_format=SQLITE_FORMAT, regexp=SQLITE_REGEXP
                )
            )
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
