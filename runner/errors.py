"""The one exception hierarchy of seed-runner.

Every error a user can cause (bad job file, bad config, unknown batch, database
not migrated) is a ``RunnerError``; the CLI prints its message and exits non-zero
without a traceback. A subclass's docstring is its default message.
"""

from __future__ import annotations


class RunnerError(Exception):
    """seed-runner failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(RunnerError):
    """Invalid configuration: check runner.toml, RUNNER_* variables and command-line flags."""

    exit_code = 2


class JobFileError(RunnerError):
    """Invalid job file."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, field: str | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        what = f"{field}: {problem}" if field else problem
        super().__init__(f"{where}: {what}")


class AlreadySubmittedError(RunnerError):
    """This job file already ran as a batch: give --again to submit it as a new one."""

    exit_code = 3  # distinct from 1 (runs failed): nothing was sent


class DatabaseError(RunnerError):
    """The database cannot be used as it is."""


class NotFoundError(RunnerError):
    """No such object."""


class QueryError(RunnerError):
    """The database refused a query (`runner sql`, `runner export`); its message says why."""


class ScheduleError(RunnerError):
    """Invalid schedule: check the cron expression, time zone and name."""

    exit_code = 2


class StoppedError(RunnerError):
    """Stopped by a signal before the end: nothing was left running."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C
