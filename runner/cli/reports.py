"""`runner report`: a batch's history as one self-contained HTML file."""

from __future__ import annotations

import re
from pathlib import Path

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.cli.base import Context, main, pass_context

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
    required=True,
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
@pass_context
def report_cmd(obj: Context, batch: str, output: Path, rounds: object) -> None:
    """Write BATCH's history (id or name) as one self-contained HTML file.

    Header (source, endpoints, models, schedules, seeds); a timeline over rounds (exact
    match and mean similarity against the round before, the distribution test's p-value,
    failures, tokens, cost, p50/p95 latency, system_fingerprint and returned model as
    coloured bands, drift report statuses as markers); each round's counts, errors and
    most changed jobs; each job's outputs across rounds and the word diff (as `runner
    diff`) between any two. No network needed to open it.
    """
    from runner.export import check_writable
    from runner.htmlreport.data import RoundRange
    from runner.htmlreport.files import build, write_report

    assert rounds is None or isinstance(rounds, RoundRange)
    check_writable(output)

    async def go(engine: AsyncEngine) -> str:
        return await build(engine, batch, rounds=rounds, prices=obj.settings.prices)

    page = obj.run(go)
    write_report(output, page)
    click.echo(f"report of batch {batch} written to {output} ({len(page.encode()) / 1e6:.2f} MB)")
