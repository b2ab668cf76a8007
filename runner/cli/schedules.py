"""Commands for schedules and drift reports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from runner.cli.base import Context, _clock, _concurrency, _format, _terminal, main, pass_context
from runner.errors import RunnerError
from runner.params import MAX_SAMPLES

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from runner.scheduling.schedule import PassResult

# The core is imported by each command (runner.cli.base says why).


def _wide() -> int:
    """Table width: a terminal's; elsewhere wide enough that rows never wrap (a table is
    only as wide as its widest row, so a long batch name is printed whole, on one line)."""
    color, width = _terminal()
    return width if color else 100_000


@main.group("schedule")
def schedule_group() -> None:
    """Regenerate batches on cron schedules; every `runner work` runs the due ticks.

    Each tick becomes one round (trigger schedule) however many workers run. When a
    scheduled round finishes it is compared with the previous finished round of its
    batch and a drift report is stored (`runner drift`).
    """


@schedule_group.command("add")
@click.argument("name")
@click.argument("batch")
@click.option(
    "--cron",
    required=True,
    show_envvar=True,
    help="When to tick: 5 fields (minute hour day-of-month month day-of-week), "
    "e.g. '0 3 * * *' for 03:00 every day, or @hourly, @daily, @weekly, @monthly.",
)
@click.option(
    "--timezone",
    default="UTC",
    show_envvar=True,
    help="IANA time zone the cron expression is read in (Europe/Paris, America/New_York).",
)
@click.option(
    "--on-drift",
    metavar="COMMAND",
    show_envvar=True,
    help="Shell command run with the drift report as JSON on stdin when a scheduled round "
    "drifted (status failures, distribution_changed or outputs_changed; "
    "fingerprint_changed only when the outputs moved too, as far as can be told).",
)
@click.option(
    "--catch-up",
    type=click.Choice(["latest", "all"]),
    default="latest",
    show_envvar=True,
    help="Ticks missed while no worker ran: latest runs only the most recent one, "
    "all runs every one, oldest first.",
)
@click.option(
    "--samples",
    type=click.IntRange(1, MAX_SAMPLES),
    show_envvar=True,
    help="Samples per job in each round (the body's n; sent as separate requests to "
    "endpoints that ignore n) [default: each job's own, 1 unless its file says samples]",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    show_envvar=True,
    help="Significance level of the drift reports' distribution test [default: 0.05]",
)
@click.option(
    "--report",
    metavar="PATH",
    show_envvar=True,
    help="Rewrite the batch's HTML report (as `runner report`) at PATH after each drift "
    "report, atomically; {date} (the tick's date) and {round} (its number) are filled in, "
    "e.g. 'reports/nightly-{date}.html'.",
)
@pass_context
def schedule_add(
    obj: Context,
    name: str,
    batch: str,
    cron: str,
    timezone: str,
    on_drift: str | None,
    catch_up: str,
    samples: int | None,
    alpha: float | None,
    report: str | None,
) -> None:
    """Schedule BATCH (id or name) under NAME: a new round of all its jobs at every tick."""
    from runner.scheduling.schedule import add_schedule
    from runner.scheduling.view import schedule_line

    async def go(engine: AsyncEngine) -> Any:
        return await add_schedule(
            engine,
            name,
            batch,
            cron=cron,
            timezone=timezone,
            catch_up=catch_up,
            on_drift=on_drift,
            samples=samples,
            alpha=alpha,
            report=report,
        )

    click.echo(schedule_line(obj.run(go)))


@schedule_group.command("list")
@_format("RUNNER_SCHEDULE_LIST_FORMAT")
@pass_context
def schedule_list(obj: Context, fmt: str) -> None:
    """Every schedule: cron, time zone, next and last tick, latest drift status."""
    from runner.db.types import utcnow
    from runner.scheduling.schedule import list_schedules
    from runner.scheduling.view import schedules_json, schedules_text

    infos = obj.run(lambda engine: list_schedules(engine, utcnow()))
    click.echo(schedules_json(infos) if fmt == "json" else schedules_text(infos, _wide()))


@schedule_group.command("pause")
@click.argument("name")
@pass_context
def schedule_pause(obj: Context, name: str) -> None:
    """Stop NAME's ticks until `runner schedule resume`."""
    from runner.db.types import utcnow
    from runner.scheduling.schedule import list_schedules, pause
    from runner.scheduling.view import schedule_line

    async def go(engine: AsyncEngine) -> Any:
        changed = await pause(engine, name)
        (info,) = await list_schedules(engine, utcnow(), name=name)
        return changed, info

    changed, info = obj.run(go)
    click.echo(schedule_line(info) + ("" if changed else " (it was paused already)"))


@schedule_group.command("resume")
@click.argument("name")
@pass_context
def schedule_resume(obj: Context, name: str) -> None:
    """Start NAME's ticks again; ticks that fell while it was paused never run."""
    from runner.db.types import utcnow
    from runner.scheduling.schedule import list_schedules, resume
    from runner.scheduling.view import schedule_line

    async def go(engine: AsyncEngine) -> Any:
        changed = await resume(engine, name)
        (info,) = await list_schedules(engine, utcnow(), name=name)
        return changed, info

    changed, info = obj.run(go)
    click.echo(schedule_line(info) + ("" if changed else " (it was not paused)"))


@schedule_group.command("remove")
@click.argument("name")
@pass_context
def schedule_remove(obj: Context, name: str) -> None:
    """Delete NAME. Its rounds and drift reports stay (their schedule_id becomes NULL)."""
    from runner.scheduling.schedule import remove

    info = obj.run(lambda engine: remove(engine, name))
    click.echo(f"schedule {info.name} removed (batch {info.batch_id} and its rounds are kept)")


@schedule_group.command("run-due")
@click.option(
    "--now",
    metavar="TIME",
    show_envvar=True,
    help="Look for ticks due at TIME (ISO 8601, UTC unless it has an offset) instead of "
    "now: a testing aid to rehearse a tick. Their rounds can be claimed at once: "
    "`runner work --burst` runs them. [default: the real time]",
)
@click.option(
    "--work",
    "work_now",
    envvar="RUNNER_SCHEDULE_RUN_DUE_WORK",
    is_flag=True,
    show_envvar=True,
    help="Also work the new rounds until done, then store their drift reports and run "
    "the on-drift commands.",
)
@_concurrency
@pass_context
def schedule_run_due(
    obj: Context, now: str | None, work_now: bool, concurrency: int | None
) -> None:
    """One scheduler pass, then exit (for system cron or a CI timer instead of `runner work`).

    Creates the rounds of due ticks, stores drift reports of finished scheduled rounds
    and runs pending on-drift commands. Racing with workers is safe: each tick gets
    one round.
    """
    from runner.scheduling.schedule import PassResult, owner_id, run_pass
    from runner.scheduling.view import pass_text
    from runner.work import Worker

    clock = _clock(now)

    async def go(engine: AsyncEngine) -> PassResult:
        owner = owner_id()
        first = await run_pass(engine, obj.settings, clock, owner)
        if not work_now or not first.rounds:
            return first
        worker = Worker(
            engine,
            obj.settings,
            concurrency=concurrency,
            burst=True,
            round_ids=[t.round.round_id for t in first.rounds],
            handle_signals=True,
            clock=clock,
        )
        await worker.run()
        if worker.stats.stranded:
            raise RunnerError(worker.stats.stranded)
        then = await run_pass(engine, obj.settings, clock, owner, ticks=False)
        return PassResult(first.rounds, first.reports + then.reports, first.hooks + then.hooks)

    click.echo(pass_text(obj.run(go, create=True)))


@main.command("drift")
@click.argument("schedule", required=False)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=30,
    show_envvar=True,
    help="Show the latest N reports.",
)
@_format("RUNNER_DRIFT_FORMAT")
@pass_context
def drift_cmd(obj: Context, schedule: str | None, limit: int, fmt: str) -> None:
    """Drift reports of SCHEDULE (or of all schedules), oldest first.

    Each compares a finished scheduled round with the previous finished round of its
    batch: status, exact-match rate, fingerprints before and after, on-drift command.
    The rows are in the drift_reports table (see docs/schema.md).
    """
    from runner.analysis.drift import history
    from runner.scheduling.schedule import schedule_id
    from runner.scheduling.view import drift_json, drift_text

    async def go(engine: AsyncEngine) -> Any:
        wanted = await schedule_id(engine, schedule) if schedule is not None else None
        return await history(engine, wanted, limit)

    rows = obj.run(go)
    click.echo(drift_json(rows) if fmt == "json" else drift_text(rows, _wide()))
