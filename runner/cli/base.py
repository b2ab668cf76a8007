"""The ``runner`` group, its global options, and the context every command gets.

Start-up is cheap (tests/acceptance/test_startup.py, bench/startup.py): a command module
is imported only when one of its commands runs (``COMMANDS``), and a command imports the
core it uses (SQLAlchemy, anyio, the openai SDK...) when it runs, so `runner --help`
costs little more than click, and `runner status` never loads the openai SDK.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from runner import __version__
from runner.errors import RunnerError

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.exc import OperationalError
    from sqlalchemy.ext.asyncio import AsyncEngine

    from runner.config import Settings

T = TypeVar("T")

# Every command: the module under runner.cli that defines it, and the first paragraph of
# its help, which `runner --help` shows without importing that module
# (tests/unit/test_cli_options.py checks both against the commands themselves).
COMMANDS: dict[str, tuple[str, str]] = {
    "batches": (
        "jobs",
        "List batches: jobs, rounds, the last round's counts and the last fingerprint seen.",
    ),
    "cancel": (
        "jobs",
        "Cancel BATCH's unfinished runs: queued ones at once, running ones at their worker's "
        "next heartbeat (their results, if they arrive, are not stored), and its provider "
        "batches (Batch API rounds) at their worker's next poll.",
    ),
    "compare": (
        "replaying",
        "Compare two finished rounds job by job, store the comparison, print the report.",
    ),
    "db": ("admin", "Database schema management."),
    "diff": (
        "replaying",
        "Word-level diff of job KEY of BATCH between two rounds ([-old-] {+new+}).",
    ),
    "drift": ("schedules", "Drift reports of SCHEDULE (or of all schedules), oldest first."),
    "export": (
        "data",
        "Export the runs of one finished round of BATCH (id or name), in job order, streamed.",
    ),
    "replay": (
        "replaying",
        "Queue BATCH (id or name) again as a new round: the same request bodies, byte for byte.",
    ),
    "report": ("reports", "Write BATCH's history (id or name) as one self-contained HTML file."),
    "retry": ("jobs", "Queue BATCH's failed (and/or cancelled) runs again as new attempts."),
    "run": ("jobs", "Submit JOB_FILE, work its runs until done, and print a summary."),
    "schedule": (
        "schedules",
        "Regenerate batches on cron schedules; every `runner work` runs the due ticks.",
    ),
    "serve": (
        "admin",
        "Serve the built-in local model over HTTP (OpenAI chat, responses, embeddings, models, "
        "and the Batch API: /v1/files and /v1/batches).",
    ),
    "show": (
        "jobs",
        "Show one run: `runner show RUN_ID` or `runner show BATCH KEY [--round N]`.",
    ),
    "sql": ("data", "Run one SQL query, read-only, and print its rows."),
    "status": (
        "jobs",
        "Counts per state, tokens, cost and errors of BATCH (id or name), or of recent batches.",
    ),
    "submit": (
        "jobs",
        "Validate JOB_FILE and queue it as a new batch (all of it or nothing).",
    ),
    "verify": (
        "replaying",
        "Run every job K times with identical bodies and report how deterministic it is.",
    ),
    "work": (
        "jobs",
        "Claim queued runs and execute them until stopped (Ctrl-C: graceful stop).",
    ),
}


class RunnerGroup(click.Group):
    """Loads command modules on first use, and turns our errors into one clear line on
    stderr and a non-zero exit.

    An error raised inside a task group (a worker's) arrives wrapped in one or more
    exception groups: if every error in them is one a user can fix (``RunnerError``, a
    database that cannot be reached), each distinct message is printed once; anything
    else is a bug and keeps its traceback.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            # Its module registers it (and its siblings) on this group.
            importlib.import_module(f"runner.cli.{COMMANDS[cmd_name][0]}")
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's command list, from ``COMMANDS`` for a command not loaded yet."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            # A stand-in with the same help shortens it as the command itself would.
            command = self.commands.get(name) or click.Command(name, help=COMMANDS[name][1])
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (Exception, BaseExceptionGroup) as exc:  # a RunnerError, or a database's
            # Only strings and a number outlive this block: a reference to ``exc`` would
            # keep its frames (and an open cursor) alive until the garbage collector runs.
            report = _report(exc, ctx.obj.settings.database_url if ctx.obj else None)
            if report is None:
                raise
            lines, code = report
            for line in lines:
                click.echo(line, err=True)
            ctx.exit(code)


def _report(exc: BaseException, database_url: str | None) -> tuple[list[str], int] | None:
    """The distinct lines to print and the exit code, if a user can fix every error."""
    errors = user_errors(exc)
    if errors is None:
        return None
    lines = list(dict.fromkeys(error_line(e, database_url) for e in errors))
    return lines, max(getattr(e, "exit_code", 1) for e in errors)


def _operational_error() -> type[OperationalError] | None:
    """SQLAlchemy's OperationalError, if SQLAlchemy is loaded (if not, no error is one)."""
    if "sqlalchemy.exc" not in sys.modules:
        return None
    from sqlalchemy.exc import OperationalError

    return OperationalError


def user_errors(exc: BaseException) -> list[RunnerError | OperationalError] | None:
    """The errors inside ``exc`` (however deeply grouped) if a user can fix every one,
    else None."""
    if isinstance(exc, RunnerError):
        return [exc]
    operational = _operational_error()
    if operational is not None and isinstance(exc, operational):
        return [exc]
    if not isinstance(exc, BaseExceptionGroup):
        return None
    found: list[RunnerError | OperationalError] = []
    for inner in exc.exceptions:
        errors = user_errors(inner)
        if errors is None:
            return None
        found += errors
    return found


def error_line(exc: RunnerError | OperationalError, database_url: str | None) -> str:
    """``error: ...`` on one line."""
    from runner.db import engine as db

    if isinstance(exc, RunnerError):
        return f"error: {db.one_line(exc.message)}"
    where = db.safe_url(database_url) if database_url else "?"
    return f"error: database {where}: {db.reason(exc, database_url)}"


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(
        self,
        fn: Callable[[AsyncEngine], Awaitable[T]],
        *,
        pool_size: int = 5,
        create: bool = False,
    ) -> T:
        """Check the schema, then run ``fn`` with an engine inside an asyncio event loop.

        ``create``: the command queues work, so a SQLite file that does not exist yet is
        created; a command that reads (the default) refuses it instead.
        """
        import anyio

        from runner.db import engine as db
        from runner.db import queue
        from runner.db.types import utcnow

        db.ensure_schema(self.settings.database_url, create=create)

        async def main() -> T:
            engine = db.create_engine_async(self.settings.database_url, pool_size=pool_size)
            try:
                # Configured prices go to model_prices, for the round_costs view.
                await queue.store_prices(engine, self.settings.prices, utcnow())
                return await fn(engine)
            finally:
                await engine.dispose()
                await _end_leftover_tasks()

        # asyncio: aiolimiter needs it. (uvloop made `runner run` hang at loop close in
        # one test, with no signal getting through to the timeout: not worth it yet.)
        return anyio.run(main, backend="asyncio")


async def _end_leftover_tasks() -> None:
    """Cancel what is still running when a command's work is done, more than once if need be.

    asyncio's shutdown cancels leftover tasks once and then waits for them without a
    limit. When a query was cancelled midway, SQLAlchemy closes its aiosqlite connection
    in a task of its own, and aiosqlite's close can wait, after that one cancellation,
    for a thread that has already ended: the process would never exit.
    """
    import asyncio

    current = asyncio.current_task()
    for _ in range(5):
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not left:
            return
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=0.5)


pass_context = click.make_pass_decorator(Context)


@click.group(
    cls=RunnerGroup, context_settings={"auto_envvar_prefix": "RUNNER", "show_default": True}
)
@click.version_option(__version__, prog_name="runner")
@click.option(
    "--db",
    "database_url",
    envvar="RUNNER_DATABASE_URL",
    show_envvar=True,
    help="Database URL: sqlite:///FILE or postgresql://USER@HOST/DB "
    "[default: runner.toml's database_url, else sqlite:///runner.db]",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_envvar=True,
    help="How much to log on stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_envvar=True,
    help="Log lines as text or as JSON objects (lines about a run carry batch, round, key "
    "and run_id fields).",
)
@click.pass_context
def main(ctx: click.Context, database_url: str | None, log_level: str, log_format: str) -> None:
    """seed-runner: run LLM request batches through a durable queue, and replay them.

    Submit job files (YAML specs or OpenAI Batch JSONL: chat completions, responses,
    embeddings), work them with an async worker against OpenAI-compatible endpoints
    (one request per try, or through the Batch API) or the built-in local model, and
    keep every output with its seed and system_fingerprint.
    """
    from runner.config import load_settings
    from runner.logs import setup_logging

    # At exit, the interpreter's last collections walk every object of the libraries a
    # command loaded (the openai SDK's models alone: 0.2-0.5 s, most of a burst worker's
    # time from its last result to its exit). A process that is ending has no garbage
    # worth finding: frozen objects are left out of them (the handler runs once).
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    settings = load_settings(database_url=database_url)
    setup_logging(log_level, log_format, (e.api_key_env for e in settings.endpoints.values()))
    ctx.obj = Context(settings)


def _format(
    envvar: str,
    choices: Sequence[str] = ("table", "json"),
    *,
    default: str = "table",
    help: str = "table for people, json for scripts.",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--format`` option (passed as ``fmt``), the same on every command that has one."""
    return click.option(
        "--format",
        "fmt",
        envvar=envvar,
        type=click.Choice(list(choices)),
        default=default,
        show_envvar=True,
        help=help,
    )


_concurrency = click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    show_envvar=True,
    help="Requests in flight at once [default: runner.toml worker.concurrency, else 16]",
)


_via = click.option(
    "--via",
    type=click.Choice(["sync", "batch"]),
    default=None,
    show_envvar=True,
    help="How the round's requests travel: sync (one request per try) or batch (provider "
    "batches through the OpenAI Batch API, at the batch price; `runner work` sends them) "
    "[default: the endpoint's mode in runner.toml, else sync]",
)


def _terminal() -> tuple[bool, int]:
    """Colour and width for tables: a terminal's, else plain text 120 columns wide."""
    color = sys.stdout.isatty()
    return color, shutil.get_terminal_size((120, 24)).columns if color else 120


def _clock(now: str | None) -> Callable[[], datetime]:
    """The real clock, or (``--now``) one that starts at the given instant."""
    from runner.db.types import utcnow
    from runner.scheduling.cron import parse_now, shifted_clock

    return utcnow if now is None else shifted_clock(parse_now(now), utcnow)
