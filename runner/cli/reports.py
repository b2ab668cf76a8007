"""`runner report`: a batch's history as one self-contained HTML file."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.cli.base import Context, main, pass_context
from runner.errors import ConfigError, RunnerError

_RANGE = re.compile(r"^(\d*)\.\.(\d*)$|^(\d+)$")


def _range(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    """``A..B``, ``A..``, ``..B`` or ``N`` -> a RoundRange."""
    if value is None:
        return None
    from runner.htmlreport.data import RoundRange

    found = _RANGE.match(value.strip())
    if found is None:
        raise click.BadParameter(f"{value!r}: give A..B, A.., ..B or N (round numbers)")
    first, last, only = found.groups()
    if only is not None:
        return RoundRange(int(only), int(only))
    span = RoundRange(int(first) if first else None, int(last) if last else None)
    if span.first is not None and span.last is not None and span.first > span.last:
        raise click.BadParameter(f"{value!r}: the first round comes after the last")
    return span


@main.command("report")
@click.argument("batch")
@click.option(
    "--output",
    "-o",
    envvar="RUNNER_REPORT_OUTPUT",
    type=click.Path(path_type=Path, dir_okay=False),
    show_envvar=True,
    help="The HTML file to write (whole or not at all: a temporary file renamed).",
)
@click.option(
    "--rounds",
    callback=_range,
    metavar="A..B",
    show_envvar=True,
    help="Only rounds A to B (A.., ..B, or one round N) [default: every round]",
)
@click.option(
    "--serve",
    is_flag=True,
    show_envvar=True,
    help="Instead of writing a file, serve the report on 127.0.0.1 (read-only) until "
    "Ctrl-C; the page reloads as runs finish and rounds are added.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8050,
    show_default=True,
    show_envvar=True,
    help="Port of --serve (0: any free port).",
)
@pass_context
def report_cmd(
    obj: Context, batch: str, output: Path | None, rounds: object, serve: bool, port: int
) -> None:
    """Write BATCH's history (id or name) as one self-contained HTML file.

    Header (source, endpoints, models, schedules, seeds); a timeline over rounds (exact
    match and mean similarity against the round before, the distribution test's p-value,
    failures, tokens, cost, p50/p95 latency, system_fingerprint and returned model as
    coloured bands, drift report statuses as markers); each round's counts, errors and
    most changed jobs; each job's outputs across rounds and the word diff (as `runner
    diff`) between any two. No network needed to open it. --serve serves it live instead.
    """
    from runner.export import check_writable
    from runner.htmlreport.data import RoundRange
    from runner.htmlreport.files import build, write_report

    assert rounds is None or isinstance(rounds, RoundRange)
    if serve:
        if output is not None or rounds is not None:
            raise ConfigError("--serve serves every round of the batch: drop -o and --rounds")
        _serve(obj, batch, port)
        return
    if output is None:
        raise ConfigError("give the file to write (-o report.html), or --serve")
    check_writable(output)

    async def go(engine: AsyncEngine) -> str:
        return await build(engine, batch, rounds=rounds, prices=obj.settings.prices)

    page = obj.run(go)
    write_report(output, page)
    click.echo(f"report of batch {batch} written to {output} ({len(page.encode()) / 1e6:.2f} MB)")


def _serve(obj: Context, batch: str, port: int) -> None:
    from runner.db import engine as db
    from runner.htmlreport.serve import serving

    url, prices = obj.settings.database_url, obj.settings.prices
    db.ensure_schema(url, create=False)  # a missing database is refused, not created
    try:
        with serving(url, batch, port=port, prices=prices) as address:
            click.echo(
                f"serving the report of batch {batch} at {address} (read-only, Ctrl-C stops)"
            )
            threading.Event().wait()
    except KeyboardInterrupt:
        click.echo("stopped")
    except OSError as exc:
        raise RunnerError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
