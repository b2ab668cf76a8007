"""The ``runner`` command: parse flags, build settings, call the core. No logic here.

Every option can also be set with an environment variable, shown in ``--help``
(``RUNNER_<COMMAND>_<OPTION>``, plus ``RUNNER_DATABASE_URL`` for ``--db``).
The command modules (admin, data, jobs, replaying, reports, schedules) are imported when one of
their commands runs: ``runner.cli.base.COMMANDS`` lists where each lives.
"""

from __future__ import annotations

from runner.cli.base import main

__all__ = ["main"]
