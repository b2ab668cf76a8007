"""Commands that read stored results out: sql, export."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from runner import export, sql, tabular
from runner.cli.base import Context, T, _format, _terminal, main, pass_context


def _stdout_pipe(write: Callable[[], T]) -> T:
    """Run ``write`` (which writes to stdout); a reader that hung up (`| head`) ends it quietly."""
    try:
        result = write()
        sys.stdout.flush()
        return result
    except BrokenPipeError:
        # Point stdout at /dev/null: Python flushes it again at exit and would complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


@main.command("sql")
@click.argument("statement", required=False)
@click.option(
    "--file",
    "-f",
    "statement_file",
    envvar="RUNNER_SQL_FILE",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    show_envvar=True,
    help="Read the statement from this file ('-': standard input).",
)
@_format(
    "RUNNER_SQL_FORMAT",
    tabular.FORMATS,
    help="table for people; csv, json (an array of objects) or jsonl (an object a line).",
)
@click.option(
    "--timeout",
    envvar="RUNNER_SQL_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=sql.DEFAULT_TIMEOUT,
    show_envvar=True,
    help="Stop the statement after this many seconds (on PostgreSQL, also a lock wait "
    "after at most 5).",
)
@pass_context
def sql_cmd(
    obj: Context, statement: str | None, statement_file: Path | None, fmt: str, timeout: float
) -> None:
    """Run one SQL query, read-only, and print its rows.

    The database refuses writes: SQLite is opened read-only; PostgreSQL runs the query
    in a READ ONLY transaction as the role seed_runner_reader, which may only read
    seed-runner's tables and views (`runner db upgrade` creates it). Ctrl-C or SIGTERM
    cancels it. Besides the tables, the views run_results, fingerprint_history and
    round_summary answer most questions (docs/schema.md):

    \b
      runner sql "SELECT * FROM round_summary WHERE batch_id = 1"
      runner sql --file query.sql --format csv > answer.csv
    """
    if statement is not None and statement_file is not None:
        raise click.UsageError("give the statement as an argument or with --file, not both")
    if statement is None and statement_file is None:
        raise click.UsageError(
            'give a statement (runner sql "SELECT * FROM round_summary") or --file FILE'
        )
    text = sql.read_statement(statement, statement_file)
    color, width = _terminal()
    _stdout_pipe(
        lambda: sql.run_sql(
            obj.settings.database_url,
            text,
            fmt,
            sys.stdout,
            color=color,
            width=width,
            timeout=timeout,
        )
    )


@main.command("export")
@click.argument("batch")
@click.option(
    "--round",
    "round_number",
    envvar="RUNNER_EXPORT_ROUND",
    type=click.IntRange(min=1),
    show_envvar=True,
    help="Round number [default: the latest]",
)
@_format(
    "RUNNER_EXPORT_FORMAT",
    export.FORMATS,
    default="jsonl",
    help="openai-batch: OpenAI Batch API output lines (custom_id = job key); "
    "jsonl: one object of run_results columns a line; csv: the same columns.",
)
@click.option(
    "--output",
    "-o",
    envvar="RUNNER_EXPORT_OUTPUT",
    type=click.Path(path_type=Path, dir_okay=False),
    show_envvar=True,
    help="Write FILE whole or not at all (a temporary file renamed when complete) "
    "[default: standard output]",
)
@pass_context
def export_cmd(
    obj: Context, batch: str, round_number: int | None, fmt: str, output: Path | None
) -> None:
    """Export the runs of one finished round of BATCH (id or name), in job order, streamed.

    Rounds with queued or running runs are refused; `runner sql` reads those.
    """

    def go() -> export.Exported:
        return export.export(
            obj.settings.database_url,
            batch,
            round_number=round_number,
            fmt=fmt,
            path=output,
            stdout=sys.stdout,
        )

    done = go() if output is not None else _stdout_pipe(go)
    if done.path is not None:
        click.echo(f"{done.target}: {done.lines} runs written to {done.path} ({done.fmt})")
