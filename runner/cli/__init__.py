"""The ``runner`` command: parse flags, build settings, call the core. No logic here.

Every option can also be set with an environment variable, shown in ``--help``
(``RUNNER_<COMMAND>_<OPTION>``, plus ``RUNNER_DATABASE_URL`` for ``--db``).
"""

from __future__ import annotations

# Importing the command modules registers their commands on ``main``.
from runner.cli import admin, data, jobs, replaying, reports, schedules
from runner.cli.base import main

__all__ = ["admin", "data", "jobs", "main", "replaying", "reports", "schedules"]
