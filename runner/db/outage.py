"""Riding out a database outage: a worker's database steps, tried again until it is back.

A PostgreSQL restart or failover, a terminated connection, a SQLite lock held past the
busy timeout, a full or failing disk: each makes a statement fail with an error that
says nothing about the statement itself. A worker must not die of it (with a traceback
that prints the statement's parameters, whole response bodies) nor throw away the
responses it holds, which were paid for. ``Outage.call`` runs a step and, on such an
error, tries it again with capped exponential backoff, logging one line when the
database goes away and one when it is back, however many steps wait meanwhile. Only
past the limit does it give up, with one line that says what happened.

Errors that are the statement's fault (an integrity or programming error) are bugs and
go through at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from runner.db.engine import reason
from runner.errors import DatabaseError

T = TypeVar("T")
log = logging.getLogger("runner.db")

FIRST_PAUSE_SECONDS = 0.1
MAX_PAUSE_SECONDS = 5.0


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable or unusable for now."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Outage:
    """Shared by every loop of one worker, so an outage is logged once, not per loop.

    The database is down from the first step that fails until every step that failed
    has gone through again: reads may pass while writes still wait for a lock, and a
    read passing does not end an outage that writes are still in.
    """

    def __init__(self, limit_seconds: float, *, what: str = "the database") -> None:
        self.limit_seconds = limit_seconds
        self.what = what
        self.down_since: float | None = None  # monotonic time of the first failure
        self.outages = 0  # how many times it went away
        self._failing: set[str] = set()  # the steps waiting for it

    @property
    def down(self) -> bool:
        return self.down_since is not None

    async def call(self, step: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``, again and again through an outage; ``DatabaseError`` past the
        limit. ``fn`` must be a whole transaction, safe to run again after a failure."""
        pause = FIRST_PAUSE_SECONDS
        while True:
            try:
                result = await fn()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._failed(step, exc)
                await anyio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_SECONDS)
                continue
            self._passed(step)
            return result

    def _failed(self, step: str, exc: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self.outages += 1
            log.warning(
                "%s is unreachable (%s: %s); holding on to results and trying again for up to %g s",
                self.what,
                step,
                reason(exc),
                self.limit_seconds,
            )
        self._failing.add(step)
        if now - self.down_since > self.limit_seconds:
            raise DatabaseError(
                f"{self.what} has been unreachable for {now - self.down_since:.0f} s "
                f"(last: {reason(exc)}); stopping (worker.database_outage_seconds = "
                f"{self.limit_seconds:g})"
            ) from None

    def _passed(self, step: str) -> None:
        if step not in self._failing:
            return
        self._failing.discard(step)
        if not self._failing and self.down_since is not None:
            log.warning("%s is back after %.1f s", self.what, time.monotonic() - self.down_since)
            self.down_since = None
