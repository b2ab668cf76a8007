"""The ``runner`` command: parse flags, build settings, call the core. No logic here.

Every option can also be set with an environment variable, shown in ``--help``
(``RUNNER_<COMMAND>_<OPTION>``, plus ``RUNNER_DATABASE_URL`` for ``--db``).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from runner import __version__, output, render
from runner.compare import ComparisonReport, EmbeddingOptions, compare
from runner.config import Settings, load_settings
from runner.db import engine as db
from runner.diff import JobDiff, diff_job
from runner.embedding import DEFAULT_MODEL as DEFAULT_EMBEDDINGS_MODEL
from runner.errors import RunnerError
from runner.replay import Selection, replay, reuse_for_round
from runner.report import batch_status, run_details
from runner.submit import Submitted, submit
from runner.verify import VerifyReport, verify
from runner.worker import Worker

T = TypeVar("T")


class RunnerGroup(click.Group):
    """Turns our errors into one clear line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RunnerError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except OperationalError as exc:
            url = ctx.obj.settings.database_url if ctx.obj else "?"
            click.echo(
                f"error: database {db.safe_url(url)}: {str(exc.orig or exc).strip()}", err=True
            )
            ctx.exit(1)


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, fn: Callable[[AsyncEngine], Awaitable[T]], *, pool_size: int = 5) -> T:
        """Check the schema, then run ``fn`` with an engine inside an asyncio event loop."""
        db.ensure_schema(self.settings.database_url)

        async def main() -> T:
            engine = db.create_engine_async(self.settings.database_url, pool_size=pool_size)
            try:
                return await fn(engine)
            finally:
                await engine.dispose()

        # asyncio (aiolimiter needs it) on uvloop: less loop overhead per request.
        return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


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
@click.pass_context
def main(ctx: click.Context, database_url: str | None, log_level: str) -> None:
    """seed-runner: run seeded chat-completion batches through a durable queue.

    Submit job files (YAML specs or OpenAI Batch JSONL), work them with an async
    worker against OpenAI-compatible endpoints or the built-in local model, and
    keep every output with its seed and system_fingerprint.
    """
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    if log_level.lower() != "debug":
        # The SDK and HTTP client log request lines at INFO; ours are enough.
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
    ctx.obj = Context(load_settings(database_url=database_url))


# ---------------------------------------------------------------- jobs


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
    return click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))(fn)


def _echo_submitted(sub: Submitted) -> None:
    click.echo(
        f"batch {sub.batch_id} ({sub.name}): {sub.job_count} jobs queued "
        f"as round {sub.round_number}"
    )


@main.command("submit")
@_job_file_options
@pass_context
def submit_cmd(obj: Context, job_file: Path, endpoint: str | None, name: str | None) -> None:
    """Validate JOB_FILE and queue it as a new batch (all of it or nothing)."""
    sub = obj.run(lambda e: submit(e, job_file, obj.settings, endpoint=endpoint, name=name))
    _echo_submitted(sub)


_concurrency = click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    show_envvar=True,
    help="Requests in flight at once [default: runner.toml worker.concurrency, else 16]",
)


@main.command("work")
@_concurrency
@click.option(
    "--burst",
    is_flag=True,
    show_envvar=True,
    help="Exit when nothing is queued or running, instead of waiting for more.",
)
@pass_context
def work_cmd(obj: Context, concurrency: int | None, burst: bool) -> None:
    """Claim queued runs and execute them until stopped (Ctrl-C: graceful stop)."""

    async def go(engine: AsyncEngine) -> Any:
        worker = Worker(
            engine, obj.settings, concurrency=concurrency, burst=burst, handle_signals=True
        )
        return await worker.run()

    concurrency_used = concurrency or obj.settings.worker.concurrency
    stats = obj.run(go, pool_size=max(5, min(concurrency_used // 8, 20)))
    click.echo(output.worker_summary(stats))


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
@pass_context
def run_cmd(
    obj: Context,
    job_file: Path,
    endpoint: str | None,
    name: str | None,
    concurrency: int | None,
    reuse: bool,
) -> None:
    """Submit JOB_FILE, work its runs until done, and print a summary.

    Exits 1 if any run failed.
    """

    async def go(engine: AsyncEngine) -> Any:
        sub = await submit(engine, job_file, obj.settings, endpoint=endpoint, name=name)
        _echo_submitted(sub)
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
        await worker.run()
        async with engine.connect() as conn:
            return await batch_status(conn, str(sub.batch_id))

    (status,) = obj.run(go)
    click.echo(output.status_text([status]))
    last = status.rounds[-1]
    if last.counts.get("failed", 0) or last.done < last.total:
        sys.exit(1)


@main.command("status")
@click.argument("batch", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_context
def status_cmd(obj: Context, batch: str | None, as_json: bool) -> None:
    """Counts per state, tokens and errors of BATCH (id or name), or of recent batches."""

    async def go(engine: AsyncEngine) -> Any:
        async with engine.connect() as conn:
            return await batch_status(conn, batch)

    statuses = obj.run(go)
    click.echo(output.status_json(statuses) if as_json else output.status_text(statuses))


@main.command("show")
@click.argument("run_or_batch")
@click.argument("key", required=False)
@click.option("--round", "round_number", type=int, help="Round number [default: the latest]")
@click.option("--json", "as_json", is_flag=True, help="Print every stored field as JSON.")
@pass_context
def show_cmd(
    obj: Context, run_or_batch: str, key: str | None, round_number: int | None, as_json: bool
) -> None:
    """Show one run: `runner show RUN_ID` or `runner show BATCH KEY [--round N]`."""
    if key is None and not run_or_batch.isdigit():
        raise click.UsageError("give a run id, or a batch and a job key")

    async def go(engine: AsyncEngine) -> Any:
        async with engine.connect() as conn:
            if key is None:
                return await run_details(conn, int(run_or_batch))
            return await run_details(conn, batch=run_or_batch, key=key, round_number=round_number)

    details = obj.run(go)
    click.echo(json.dumps(details, default=str, indent=2) if as_json else output.run_text(details))


# ---------------------------------------------------------------- local model server


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_envvar=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    type=click.IntRange(0, 65535),
    show_envvar=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--latency-ms",
    default="0",
    show_envvar=True,
    help="Added latency per request: fixed ('200') or a uniform range ('50-200').",
)
@click.option(
    "--rpm",
    type=click.IntRange(min=1),
    show_envvar=True,
    help="Requests per minute before HTTP 429, like OpenAI [default: unlimited]",
)
@click.option(
    "--tpm",
    type=click.IntRange(min=1),
    show_envvar=True,
    help="Tokens per minute (prompt + max_tokens x n) before HTTP 429 [default: unlimited]",
)
@click.option(
    "--fail-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    show_envvar=True,
    help="Share of requests that fail with one of --faults.",
)
@click.option(
    "--faults",
    default="429,500,503,timeout,drop",
    show_envvar=True,
    help="Which faults --fail-rate draws from: 429 (a spurious rate limit with "
    "Retry-After), 500, 503, timeout (hold the request "
    "--hang-s seconds), drop (close the connection mid-response).",
)
@click.option(
    "--hang-s",
    default=60.0,
    type=click.FloatRange(min=0),
    show_envvar=True,
    help="How long a 'timeout' fault holds the request.",
)
@click.option(
    "--variant",
    show_envvar=True,
    help="Serve a changed model (other outputs and system_fingerprint), "
    "to simulate a backend update.",
)
@click.option(
    "--seed",
    default=0,
    type=int,
    show_envvar=True,
    help="Seed of the latency and fault draws, so a fault pattern repeats.",
)
def serve_cmd(
    host: str,
    port: int,
    latency_ms: str,
    rpm: int | None,
    tpm: int | None,
    fail_rate: float,
    faults: str,
    hang_s: float,
    variant: str | None,
    seed: int,
) -> None:
    """Serve the built-in local model over HTTP (OpenAI chat completions, embeddings, models).

    Any OpenAI client can use it: base URL http://HOST:PORT/v1, any API key.
    """
    from runner.localmodel.server import ServerOptions, run_server

    try:
        options = ServerOptions(
            host=host,
            port=port,
            latency_ms=latency_ms,
            rpm=rpm,
            tpm=tpm,
            fail_rate=fail_rate,
            faults=tuple(f.strip() for f in faults.split(",") if f.strip()),
            hang_s=hang_s,
            variant=variant,
            seed=seed,
            log_level="warning",
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    run_server(options)


# ---------------------------------------------------------------- database


@main.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@click.option("--revision", default="head", help="Target schema revision.")
@pass_context
def db_upgrade(obj: Context, revision: str) -> None:
    """Create or upgrade the schema (needed once for PostgreSQL and after updates)."""
    before, after = db.upgrade(obj.settings.database_url, revision)
    url = db.safe_url(obj.settings.database_url)
    if before == after:
        click.echo(f"{url}: schema already at {after}")
    else:
        click.echo(f"{url}: schema upgraded from {before or 'empty'} to {after}")


@db_group.command("current")
@pass_context
def db_current(obj: Context) -> None:
    """Print the schema revision of the database and the one this version needs."""
    engine = db.create_sync_engine(obj.settings.database_url)
    try:
        with engine.connect() as conn:
            current = db.current_revision(conn)
    finally:
        engine.dispose()
    click.echo(f"database: {current or 'empty'}\nrequired: {db.head_revision()}")


# ---------------------------------------------------------------- replay, compare, diff, verify


def _rate(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--fail-under``: a share, ``0.95`` or ``95%``."""
    if value is None:
        return None
    text = value.strip()
    try:
        rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a rate: give 0.95 or 95%") from None
    if not 0.0 <= rate <= 1.0:
        raise click.BadParameter(f"{value!r} is not between 0 and 1 (0% and 100%)")
    return rate


def _terminal() -> tuple[bool, int]:
    """Colour and width for tables: a terminal's, else plain text 120 columns wide."""
    color = sys.stdout.isatty()
    return color, shutil.get_terminal_size((120, 24)).columns if color else 120


async def _work_rounds(
    engine: AsyncEngine, settings: Settings, round_ids: list[int], concurrency: int | None
) -> None:
    worker = Worker(
        engine,
        settings,
        concurrency=concurrency,
        burst=True,
        round_ids=round_ids,
        handle_signals=True,
    )
    await worker.run()


_rounds_option = click.option(
    "--rounds",
    nargs=2,
    type=int,
    metavar="A B",
    show_envvar=True,
    help="Round numbers to compare (with two batches: round A of the first, B of the second) "
    "[default: the latest two finished rounds; with two batches, the latest finished of each]",
)


@main.command("replay")
@click.argument("batch")
@click.option(
    "--job",
    "keys",
    envvar="RUNNER_REPLAY_JOB",
    multiple=True,
    metavar="KEY",
    show_envvar=True,
    help="Replay only this job (repeatable).",
)
@click.option(
    "--run",
    "run_ids",
    envvar="RUNNER_REPLAY_RUN",
    multiple=True,
    type=int,
    metavar="ID",
    show_envvar=True,
    help="Replay only the job of this run (repeatable).",
)
@click.option(
    "--only-failed",
    is_flag=True,
    show_envvar=True,
    help="Only jobs whose latest finished run failed.",
)
@click.option(
    "--only-changed",
    is_flag=True,
    show_envvar=True,
    help="Only jobs whose last two finished runs differ (output or success).",
)
@click.option(
    "--endpoint",
    show_envvar=True,
    help="Send the requests to this endpoint instead, bodies unchanged "
    "(recorded on the round) [default: each job's own]",
)
@click.option(
    "--model",
    show_envvar=True,
    help="Replace the model in every body, nothing else (recorded on the round; "
    "the new body hash is stored in runs.request_hash) [default: each job's own]",
)
@click.option(
    "--reuse",
    is_flag=True,
    show_envvar=True,
    help="Copy stored successful results of the same request (body hash) to the "
    "same endpoint instead of sending it again. Off unless given.",
)
@click.option(
    "--work",
    "work_now",
    envvar="RUNNER_REPLAY_WORK",
    is_flag=True,
    show_envvar=True,
    help="Work the new round until done and print its status (exit 1 if any failed).",
)
@_concurrency
@pass_context
def replay_cmd(
    obj: Context,
    batch: str,
    keys: tuple[str, ...],
    run_ids: tuple[int, ...],
    only_failed: bool,
    only_changed: bool,
    endpoint: str | None,
    model: str | None,
    reuse: bool,
    work_now: bool,
    concurrency: int | None,
) -> None:
    """Queue BATCH (id or name) again as a new round: the same request bodies, byte for byte.

    Filters combine: `--job a --only-failed` replays job a if its latest run failed.
    """
    selection = Selection(keys, run_ids, only_failed=only_failed, only_changed=only_changed)

    async def go(engine: AsyncEngine) -> Any:
        replayed = await replay(
            engine, obj.settings, batch, selection, endpoint=endpoint, model=model, reuse=reuse
        )
        click.echo(render.replayed_line(replayed))
        if not work_now:
            return None
        if replayed.queued:
            await _work_rounds(engine, obj.settings, [replayed.round_id], concurrency)
        async with engine.connect() as conn:
            return await batch_status(conn, str(replayed.batch_id))

    statuses = obj.run(go)
    if statuses:
        click.echo(output.status_text(statuses))
        last = statuses[0].rounds[-1]
        if last.counts.get("failed", 0) or last.done < last.total:
            sys.exit(1)


@main.command("compare")
@click.argument("batch")
@click.argument("other_batch", required=False)
@_rounds_option
@click.option(
    "--format",
    "fmt",
    envvar="RUNNER_COMPARE_FORMAT",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_envvar=True,
    help="table: summary for people; json: everything; csv: per job.",
)
@click.option(
    "--fail-under",
    callback=_rate,
    metavar="RATE",
    show_envvar=True,
    help="Exit 1 if the exact-match rate is under RATE (0.95 or 95%), for CI gates.",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=5,
    show_envvar=True,
    help="How many of the most changed jobs the table lists.",
)
@click.option(
    "--embeddings",
    is_flag=True,
    show_envvar=True,
    help="Also measure the cosine distance of each pair of outputs "
    "through an endpoint's /v1/embeddings.",
)
@click.option(
    "--embeddings-endpoint",
    show_envvar=True,
    help="Endpoint to embed with [default: the one round A's runs went to]",
)
@click.option(
    "--embeddings-model",
    default=DEFAULT_EMBEDDINGS_MODEL,
    show_envvar=True,
    help="Embedding model to ask for.",
)
@pass_context
def compare_cmd(
    obj: Context,
    batch: str,
    other_batch: str | None,
    rounds: tuple[int, int] | None,
    fmt: str,
    fail_under: float | None,
    top: int,
    embeddings: bool,
    embeddings_endpoint: str | None,
    embeddings_model: str,
) -> None:
    """Compare two finished rounds job by job, store the comparison, print the report.

    `runner compare BATCH` compares its latest two finished rounds, `--rounds 1 3` two
    chosen ones; `runner compare BATCH OTHER` matches two batches by job key.
    """
    options = (
        EmbeddingOptions(embeddings_endpoint, embeddings_model)
        if embeddings or embeddings_endpoint
        else None
    )

    async def go(engine: AsyncEngine) -> ComparisonReport:
        return await compare(
            engine,
            obj.settings,
            batch,
            other_batch,
            rounds=(rounds[0], rounds[1]) if rounds else None,
            embeddings=options,
            top=top,
        )

    report = obj.run(go)
    if fmt == "json":
        click.echo(render.comparison_json(report))
    elif fmt == "csv":
        click.echo(render.comparison_csv(report))
    else:
        color, width = _terminal()
        click.echo(render.comparison_table(report, color=color, width=width))
    rate = report.summary.exact_match_rate
    if fail_under is not None and rate < fail_under:
        click.echo(
            f"exact-match rate {rate:.1%} is under --fail-under {fail_under:.1%} "
            f"(comparison {report.id})",
            err=True,
        )
        sys.exit(1)


@main.command("diff")
@click.argument("batch")
@click.argument("key")
@click.option(
    "--rounds",
    nargs=2,
    type=int,
    metavar="A B",
    show_envvar=True,
    help="Round numbers [default: the job's last two finished runs]",
)
@pass_context
def diff_cmd(obj: Context, batch: str, key: str, rounds: tuple[int, int] | None) -> None:
    """Word-level diff of job KEY of BATCH between two rounds ([-old-] {+new+})."""

    async def go(engine: AsyncEngine) -> JobDiff:
        pair = (rounds[0], rounds[1]) if rounds else None
        return await diff_job(engine, batch, key, pair)

    found = obj.run(go)
    color, width = _terminal()
    click.echo(render.diff_text(found, color=color, width=width))


@main.command("verify")
@click.argument("target", metavar="JOBFILE|BATCH")
@click.option(
    "--times",
    "-k",
    type=click.IntRange(2, 1000),
    default=5,
    show_envvar=True,
    help="Runs per job (K).",
)
@click.option(
    "--endpoint",
    show_envvar=True,
    help="Send every job to this endpoint [default: the file's, or each job's own]",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=50,
    show_envvar=True,
    help="The table lists at most this many jobs, the least deterministic first.",
)
@click.option(
    "--format",
    "fmt",
    envvar="RUNNER_VERIFY_FORMAT",
    type=click.Choice(["table", "json"]),
    default="table",
    show_envvar=True,
    help="table for people, json for scripts.",
)
@_concurrency
@pass_context
def verify_cmd(
    obj: Context,
    target: str,
    times: int,
    endpoint: str | None,
    top: int,
    fmt: str,
    concurrency: int | None,
) -> None:
    """Run every job K times with identical bodies and report how deterministic it is.

    JOBFILE is submitted first (round 1 is the first run); a BATCH gets K new rounds.
    Per job and per endpoint / model / fingerprint: unique outputs out of K, TARr@K
    (all K outputs byte-identical) and mean pairwise similarity. Exits 1 if a run failed.
    """

    async def go(engine: AsyncEngine) -> VerifyReport:
        return await verify(
            engine,
            obj.settings,
            target,
            times=times,
            endpoint=endpoint,
            concurrency=concurrency,
            handle_signals=True,
        )

    report = obj.run(go)
    if fmt == "json":
        click.echo(render.verify_json(report))
    else:
        color, width = _terminal()
        click.echo(render.verify_table(report, top=top, color=color, width=width))
    if report.failed_runs or report.unfinished_runs:
        sys.exit(1)
