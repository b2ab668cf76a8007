"""Commands for jobs and runs: submit, work, run, status, batches, cancel, retry, show."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from runner.cli.base import Context, _clock, _concurrency, _format, main, pass_context
from runner.errors import RunnerError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from runner.db import queue
    from runner.progress import Mode
    from runner.submit import Submitted

# The core is imported by each command (runner.cli.base says why).


def _job_file_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--name", help="Batch name [default: the file's name: or its file name]", show_envvar=True
    )(fn)
    fn = click.option(
        "--endpoint",
        show_envvar=True,
        help="Send every job to this endpoint instead of the one the file names "
        "[default: YAML 'endpoint' (local), 'openai' for .jsonl]",
    )(fn)
    fn = click.option(
        "--again",
        is_flag=True,
        show_envvar=True,
        help="Submit JOB_FILE as a new batch even if the same file (bytes, --name and "
        "--endpoint) was submitted before. Without it, an unfinished batch of that file is "
        "taken up instead of queued twice, and a finished one is refused (exit 3).",
    )(fn)
    fn = click.option(
        "--max-jobs",
        type=click.IntRange(min=1),
        envvar="RUNNER_MAX_JOBS",
        show_envvar=True,
        help="Refuse a file that gives more jobs than this (nothing is stored) "
        "[default: runner.toml submit.max_jobs, else 10000000]",
    )(fn)
    return click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))(fn)


def _left_text(sub: Submitted) -> str:
    last = sub.resumed
    assert last is not None
    return (
        f"batch {sub.batch_id} ({sub.name}) round {sub.round_number} "
        f"({last.left} of {sub.job_count} runs left)"
    )


def _echo_submitted(sub: Submitted) -> None:
    if sub.resumed is not None:
        click.echo(
            f"{_left_text(sub)} is already queued, nothing new queued: "
            "`runner work` runs it (--again submits the file as a new batch)"
        )
    else:
        click.echo(
            f"batch {sub.batch_id} ({sub.name}): {sub.job_count} jobs queued "
            f"as round {sub.round_number}"
        )
    if sub.schedule is not None:
        click.echo(f"schedule {sub.schedule} created: see `runner schedule list`")
    if sub.missing_key is not None:
        click.echo(f"warning: {sub.missing_key}; a worker needs it to send these runs", err=True)


@main.command("submit")
@_job_file_options
@pass_context
def submit_cmd(
    obj: Context,
    job_file: Path,
    endpoint: str | None,
    name: str | None,
    again: bool,
    max_jobs: int | None,
) -> None:
    """Validate JOB_FILE and queue it as a new batch (all of it or nothing).

    The same file submitted again is not queued twice: if its batch still has runs
    queued or running it says so and exits 0; if it finished it exits 3 (see --again).
    Warns if the endpoint's API key variable is not set here (workers elsewhere may
    have it).
    """
    from runner.submit import submit

    sub = obj.run(
        lambda e: submit(
            e,
            job_file,
            obj.settings,
            endpoint=endpoint,
            name=name,
            again=again,
            max_jobs=max_jobs,
        ),
        create=True,
    )
    _echo_submitted(sub)


def _progress_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--progress-interval",
        type=click.FloatRange(min=0.05),
        default=None,
        show_envvar=True,
        help="Seconds between progress updates [default: 0.5 on a terminal, 10 otherwise]",
    )(fn)
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        show_envvar=True,
        help="No progress display (on a terminal) or progress lines (elsewhere).",
    )(fn)


def _progress_mode(quiet: bool, interval: float | None) -> tuple[Mode, float]:
    if quiet:
        return "quiet", 1.0
    if sys.stderr.isatty():
        return "live", interval or 0.5
    return "log", interval or 10.0


@main.command("work")
@_concurrency
@click.option(
    "--burst",
    is_flag=True,
    show_envvar=True,
    help="Exit when nothing is queued or running, instead of waiting for more; exit 1 if "
    "any run this worker worked ended failed. Runs queued for later (retries) keep it "
    "waiting, and its progress says for what; when all that is left is queued more than "
    "5 minutes ahead, it exits 1 saying so.",
)
@_progress_options
@click.option(
    "--now",
    metavar="TIME",
    show_envvar=True,
    help="A testing aid: start this worker's clock at TIME (ISO 8601, UTC unless it has an "
    "offset), then let it run on in real time, to rehearse schedule ticks without waiting "
    "for them. Leases and timestamps follow this clock. [default: the real time]",
)
@pass_context
def work_cmd(
    obj: Context,
    concurrency: int | None,
    burst: bool,
    quiet: bool,
    progress_interval: float | None,
    now: str | None,
) -> None:
    """Claim queued runs and execute them until stopped (Ctrl-C: graceful stop).

    On a terminal it shows live progress; elsewhere it prints a progress line every
    few seconds. With --burst it exits 1 if any run it worked ended failed (for scripts
    and cron); a worker without --burst exits 0 when stopped. It refuses to start if
    queued runs need an endpoint whose API key is not set here, and leaves them queued.
    """
    from runner import output
    from runner.db import queue
    from runner.progress import run_with_progress
    from runner.work import Worker

    mode, interval = _progress_mode(quiet, progress_interval)

    async def go(engine: AsyncEngine) -> Any:
        # A key missing for queued work: say so now, before any run is claimed.
        obj.settings.require_keys(await queue.unfinished_endpoints(engine))
        worker = Worker(
            engine,
            obj.settings,
            concurrency=concurrency,
            burst=burst,
            handle_signals=True,
            clock=_clock(now),
        )
        await run_with_progress(engine, worker, mode=mode, interval=interval)
        return worker.stats

    concurrency_used = concurrency or obj.settings.worker.concurrency
    stats = obj.run(go, pool_size=max(5, min(concurrency_used // 8, 20)), create=True)
    click.echo(output.worker_summary(stats))
    if stats.stranded:  # --burst, and what is left is queued for later than it waits
        raise RunnerError(stats.stranded)
    if burst and stats.failed:
        click.echo(f"{stats.failed} runs failed: see `runner status`", err=True)
        sys.exit(1)


@main.command("run")
@_job_file_options
@_concurrency
@click.option(
    "--reuse",
    is_flag=True,
    show_envvar=True,
    help="Copy stored successful results of identical requests (body hash) to the same "
    "endpoint instead of sending them again (see `runner replay --help`). Off unless given.",
)
@_progress_options
@pass_context
def run_cmd(
    obj: Context,
    job_file: Path,
    endpoint: str | None,
    name: str | None,
    again: bool,
    max_jobs: int | None,
    concurrency: int | None,
    reuse: bool,
    quiet: bool,
    progress_interval: float | None,
) -> None:
    """Submit JOB_FILE, work its runs until done, and print a summary.

    Run it again after Ctrl-C or a crash: the same file (bytes, --name and --endpoint)
    resumes its batch instead of sending everything again; once that batch finished it
    exits 3 (see --again). Exits 1 if any run failed or is left unfinished. Nothing is
    queued if the endpoint's API key is not set.
    """
    from runner import output
    from runner.progress import run_with_progress
    from runner.replay import reuse_for_round
    from runner.report import batch_status
    from runner.submit import submit
    from runner.work import Worker

    async def go(engine: AsyncEngine) -> Any:
        sub = await submit(
            engine,
            job_file,
            obj.settings,
            endpoint=endpoint,
            name=name,
            again=again,
            require_key=True,
            max_jobs=max_jobs,
        )
        if sub.resumed is None:
            _echo_submitted(sub)
        else:
            click.echo(f"resuming {_left_text(sub)} (--again submits the file as a new batch)")
            _echo_held(sub.resumed)
        if reuse:
            reused = await reuse_for_round(engine, sub.round_id)
            click.echo(f"{reused} runs reused stored results of identical requests")
        worker = Worker(
            engine,
            obj.settings,
            concurrency=concurrency,
            burst=True,
            round_ids=[sub.round_id],
            handle_signals=True,
        )
        await run_with_progress(engine, worker, mode=mode, interval=interval)
        async with engine.connect() as conn:
            return worker.stats, await batch_status(conn, str(sub.batch_id))

    mode, interval = _progress_mode(quiet, progress_interval)
    stats, (status,) = obj.run(go, create=True)
    click.echo(output.status_text([status], obj.settings.prices))
    for endpoint_name, why in stats.disabled_endpoints.items():
        click.echo(f"error: endpoint {endpoint_name}: {why}", err=True)
    if stats.stranded:
        click.echo(f"error: {stats.stranded}", err=True)
    last = status.rounds[-1]
    if last.done < last.total:
        again_cmd = _resume_command(job_file, endpoint, name)
        click.echo(
            f"stopped with {last.total - last.done} runs left: run `{again_cmd}` again to resume",
            err=True,
        )
    if last.counts.get("failed", 0) or last.done < last.total:
        sys.exit(1)


def _echo_held(last: queue.LastRound) -> None:
    """Runs another worker holds (maybe one killed before it could release them)."""
    from runner.db.models import RunState
    from runner.db.types import utcnow

    held = last.counts.get(RunState.RUNNING.value, 0)
    if not held or last.lease_until is None:
        return
    if last.lease_until > utcnow():
        click.echo(
            f"{held} runs are held by another worker: waiting for them (if it was killed, "
            f"they come back here when its lease ends, {last.lease_until:%H:%M:%S} UTC)"
        )
    else:
        click.echo(f"{held} runs were left running by a worker whose lease ended: taking them back")


def _resume_command(job_file: Path, endpoint: str | None, name: str | None) -> str:
    """The command line that resumes this run (secrets masked: ``--db`` as safe_url)."""
    from runner.db.engine import safe_url

    words = ["runner"]
    root = click.get_current_context().find_root()
    if root.get_parameter_source("database_url") == ParameterSource.COMMANDLINE:
        words += ["--db", safe_url(root.params["database_url"])]
    words += ["run", str(job_file)]
    for flag, value in (("--endpoint", endpoint), ("--name", name)):
        if value is not None:
            words += [flag, value]
    return shlex.join(words)


# ``--json``, before status and show took ``--format json`` like every other command:
# hidden, still accepted, so scripts written for it keep working.
_json_alias = click.option(
    "--json", "as_json", is_flag=True, hidden=True, help="Deprecated: --format json."
)


@main.command("status")
@click.argument("batch", required=False)
@_format(
    "RUNNER_STATUS_FORMAT",
    ("text", "json"),
    default="text",
    help="text for people, json for scripts.",
)
@_json_alias
@click.option(
    "--watch",
    is_flag=True,
    show_envvar=True,
    help="Show it again every --interval seconds until Ctrl-C.",
)
@click.option(
    "--interval",
    default=2.0,
    type=click.FloatRange(min=0.1),
    show_envvar=True,
    help="Seconds between updates with --watch.",
)
@pass_context
def status_cmd(
    obj: Context, batch: str | None, fmt: str, as_json: bool, watch: bool, interval: float
) -> None:
    """Counts per state, tokens, cost and errors of BATCH (id or name), or of recent batches.

    Cost needs prices in runner.toml ([prices."MODEL"] input/output in USD per 1M tokens);
    a model without one makes the cost unknown, never 0.
    """
    from runner import output
    from runner.report import batch_status

    prices = obj.settings.prices
    as_json = as_json or fmt == "json"

    def text(statuses: Any) -> str:
        return (
            output.status_json(statuses, prices)
            if as_json
            else output.status_text(statuses, prices)
        )

    async def once(engine: AsyncEngine) -> Any:
        async with engine.connect() as conn:
            return await batch_status(conn, batch)

    async def loop(engine: AsyncEngine) -> None:
        from runner.progress import watch_status

        await watch_status(lambda: once(engine), text, interval)

    if not watch:
        click.echo(text(obj.run(once)))
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
        obj.run(loop)


@main.command("batches")
@click.option(
    "--limit",
    default=50,
    type=click.IntRange(min=1),
    show_envvar=True,
    help="How many of the most recent batches to list.",
)
@pass_context
def batches_cmd(obj: Context, limit: int) -> None:
    """List batches: jobs, rounds, the last round's counts and the last fingerprint seen."""
    from runner import output
    from runner.report import list_batches

    async def go(engine: AsyncEngine) -> Any:
        async with engine.connect() as conn:
            return await list_batches(conn, limit)

    click.echo(output.batches_text(obj.run(go)))


@main.command("cancel")
@click.argument("batch")
@click.option(
    "--round",
    "round_number",
    envvar="RUNNER_CANCEL_ROUND",
    type=int,
    show_envvar=True,
    help="Only this round [default: every round]",
)
@pass_context
def cancel_cmd(obj: Context, batch: str, round_number: int | None) -> None:
    """Cancel BATCH's unfinished runs: queued ones at once, running ones at their
    worker's next heartbeat (their results, if they arrive, are not stored)."""
    from runner.db import queue
    from runner.db.types import utcnow
    from runner.report import resolve_batch, round_ids_of

    async def go(engine: AsyncEngine) -> tuple[str, int, int]:
        async with engine.connect() as conn:
            found = await resolve_batch(conn, batch)
            ids = await round_ids_of(conn, found, round_number)
        queued, running = await queue.cancel_runs(engine, ids, utcnow())
        return f"batch {found.id} ({found.name})", queued, running

    what, queued, running = obj.run(go)
    where = f" round {round_number}" if round_number is not None else ""
    click.echo(f"{what}{where}: cancelled {queued} queued and {running} running runs")


@main.command("retry")
@click.argument("batch")
@click.option("--failed", is_flag=True, show_envvar=True, help="Queue the failed runs again.")
@click.option("--cancelled", is_flag=True, show_envvar=True, help="Queue the cancelled runs again.")
@click.option(
    "--round",
    "round_number",
    envvar="RUNNER_RETRY_ROUND",
    type=int,
    show_envvar=True,
    help="Only this round [default: the last]",
)
@click.option(
    "--attempts",
    default=None,
    type=click.IntRange(min=1),
    show_envvar=True,
    help="More tries each run gets [default: worker.max_attempts]",
)
@pass_context
def retry_cmd(
    obj: Context,
    batch: str,
    failed: bool,
    cancelled: bool,
    round_number: int | None,
    attempts: int | None,
) -> None:
    """Queue BATCH's failed (and/or cancelled) runs again as new attempts.

    Then run `runner work` to execute them.
    """
    from runner.db import queue
    from runner.db.models import RunState
    from runner.db.types import utcnow
    from runner.report import resolve_batch, round_ids_of

    states = [s for s, on in ((RunState.FAILED, failed), (RunState.CANCELLED, cancelled)) if on]
    if not states:
        raise click.UsageError("say what to retry: --failed and/or --cancelled")
    extra = attempts or obj.settings.worker.max_attempts

    async def go(engine: AsyncEngine) -> tuple[str, int]:
        async with engine.connect() as conn:
            found = await resolve_batch(conn, batch)
            ids = await round_ids_of(conn, found, round_number)
        target = ids[-1:]  # the round asked for, or the batch's last
        count = await queue.requeue_runs(engine, target, states, extra_attempts=extra, now=utcnow())
        return f"batch {found.id} ({found.name})", count

    what, count = obj.run(go)
    click.echo(f"{what}: {count} runs queued again; run `runner work` to execute them")


@main.command("show")
@click.argument("run_or_batch")
@click.argument("key", required=False)
@click.option(
    "--round",
    "round_number",
    envvar="RUNNER_SHOW_ROUND",
    type=int,
    show_envvar=True,
    help="Round number [default: the latest]",
)
@_format(
    "RUNNER_SHOW_FORMAT",
    ("text", "json"),
    default="text",
    help="text for people; json: every stored field.",
)
@_json_alias
@pass_context
def show_cmd(
    obj: Context,
    run_or_batch: str,
    key: str | None,
    round_number: int | None,
    fmt: str,
    as_json: bool,
) -> None:
    """Show one run: `runner show RUN_ID` or `runner show BATCH KEY [--round N]`.

    The text says what was sent (endpoint, model, seed and the request body, the exact
    JSON), what came back, and null for what is not known.
    """
    if key is None and not run_or_batch.isdigit():
        raise click.UsageError("give a run id, or a batch and a job key")
    from runner import output
    from runner.report import run_details

    async def go(engine: AsyncEngine) -> Any:
        async with engine.connect() as conn:
            if key is None:
                return await run_details(conn, int(run_or_batch))
            return await run_details(conn, batch=run_or_batch, key=key, round_number=round_number)

    details = obj.run(go)
    as_json = as_json or fmt == "json"
    click.echo(output.run_json(details) if as_json else output.run_text(details))
