"""Commands that rerun and measure: replay, compare, diff, verify."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from runner.analysis.distribution import DEFAULT_ALPHA
from runner.analysis.embedding import DEFAULT_MODEL as DEFAULT_EMBEDDINGS_MODEL
from runner.cli.base import Context, _concurrency, _format, _terminal, main, pass_context
from runner.errors import RunnerError
from runner.params import MAX_SAMPLES

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from runner.analysis.compare import ComparisonReport
    from runner.analysis.diff import JobDiff
    from runner.analysis.verify import VerifyReport
    from runner.config import Settings

# The core is imported by each command (runner.cli.base says why).


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


async def _work_rounds(
    engine: AsyncEngine, settings: Settings, round_ids: list[int], concurrency: int | None
) -> None:
    from runner.work import Worker

    worker = Worker(
        engine,
        settings,
        concurrency=concurrency,
        burst=True,
        round_ids=round_ids,
        handle_signals=True,
    )
    await worker.run()
    if worker.stats.stranded:
        raise RunnerError(worker.stats.stranded)


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
    "--samples",
    type=click.IntRange(1, MAX_SAMPLES),
    show_envvar=True,
    help="Samples per job (set the body's n, nothing else; recorded on the round, the new "
    "body hash in runs.request_hash; sent as separate requests to endpoints that ignore n) "
    "[default: each job's own]",
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
    samples: int | None,
    reuse: bool,
    work_now: bool,
    concurrency: int | None,
) -> None:
    """Queue BATCH (id or name) again as a new round: the same request bodies, byte for byte.

    Filters combine: `--job a --only-failed` replays job a if its latest run failed.
    """
    from runner import output, render
    from runner.replay import Selection, replay
    from runner.report import batch_status

    selection = Selection(keys, run_ids, only_failed=only_failed, only_changed=only_changed)

    async def go(engine: AsyncEngine) -> Any:
        replayed = await replay(
            engine,
            obj.settings,
            batch,
            selection,
            endpoint=endpoint,
            model=model,
            samples=samples,
            reuse=reuse,
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
        click.echo(output.status_text(statuses, obj.settings.prices))
        last = statuses[0].rounds[-1]
        if last.counts.get("failed", 0) or last.done < last.total:
            sys.exit(1)


@main.command("compare")
@click.argument("batch")
@click.argument("other_batch", required=False)
@_rounds_option
@_format(
    "RUNNER_COMPARE_FORMAT",
    ["table", "json", "csv"],
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
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=DEFAULT_ALPHA,
    show_default=True,
    show_envvar=True,
    help="Significance level of the distribution test (MMD over the jobs' samples, "
    "permutation p-value): it rejects when p <= alpha.",
)
@click.option(
    "--fail-on",
    type=click.Choice(["distribution_changed"]),
    show_envvar=True,
    help="Exit 1 if the distribution test rejects at --alpha, for CI gates (rounds need two "
    "samples per job or more: samples: K, --samples K).",
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
    alpha: float,
    fail_on: str | None,
    top: int,
    embeddings: bool,
    embeddings_endpoint: str | None,
    embeddings_model: str,
) -> None:
    """Compare two finished rounds job by job, store the comparison, print the report.

    `runner compare BATCH` compares its latest two finished rounds, `--rounds 1 3` two
    chosen ones; `runner compare BATCH OTHER` matches two batches by job key.
    """
    from runner import output, render
    from runner.analysis.compare import EmbeddingOptions, compare
    from runner.analysis.distribution import Verdict
    from runner.report import batch_status

    options = (
        EmbeddingOptions(embeddings_endpoint, embeddings_model)
        if embeddings or embeddings_endpoint
        else None
    )

    async def go(engine: AsyncEngine) -> tuple[ComparisonReport, list[Any]]:
        report = await compare(
            engine,
            obj.settings,
            batch,
            other_batch,
            rounds=(rounds[0], rounds[1]) if rounds else None,
            embeddings=options,
            top=top,
            alpha=alpha,
        )
        costs = []
        async with engine.connect() as conn:
            for side in (report.a, report.b):
                (status,) = await batch_status(conn, str(side.batch_id))
                (rnd,) = [r for r in status.rounds if r.number == side.number]
                costs.append(rnd.cost(obj.settings.prices))
        return report, costs

    report, costs = obj.run(go)
    if fmt == "json":
        data = json.loads(render.comparison_json(report))
        data["cost_usd"] = {"a": costs[0][0], "b": costs[1][0]}  # null: a model has no price
        click.echo(json.dumps(data, indent=2))
    elif fmt == "csv":
        click.echo(render.comparison_csv(report))
    else:
        color, width = _terminal()
        click.echo(render.comparison_table(report, color=color, width=width))
        click.echo(f"A {output.cost_text(*costs[0])}\nB {output.cost_text(*costs[1])}", nl=True)
    rate = report.summary.exact_match_rate
    failed = False
    if fail_under is not None and rate < fail_under:
        click.echo(
            f"exact-match rate {rate:.1%} is under --fail-under {fail_under:.1%} "
            f"(comparison {report.id})",
            err=True,
        )
        failed = True
    tested = report.distribution
    if fail_on and tested is not None and tested.verdict is Verdict.CHANGED:
        click.echo(
            f"the output distribution changed: p = {tested.p_value:.4g} <= alpha {alpha:g} "
            f"(comparison {report.id})",
            err=True,
        )
        failed = True
    if failed:
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
    from runner import render
    from runner.analysis.diff import diff_job

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
    "--samples",
    type=click.IntRange(1, MAX_SAMPLES),
    show_envvar=True,
    help="Samples per run, for a BATCH (the body's n; a job file says samples: K itself): "
    "the table then counts distinct samples and whether the endpoint honoured n.",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=50,
    show_envvar=True,
    help="The table lists at most this many jobs, the least deterministic first.",
)
@_format("RUNNER_VERIFY_FORMAT")
@_concurrency
@pass_context
def verify_cmd(
    obj: Context,
    target: str,
    times: int,
    endpoint: str | None,
    samples: int | None,
    top: int,
    fmt: str,
    concurrency: int | None,
) -> None:
    """Run every job K times with identical bodies and report how deterministic it is.

    JOBFILE is submitted first (round 1 is the first run); a BATCH gets K new rounds.
    Per job and per endpoint / model / fingerprint: unique outputs out of K, TARr@K
    (all K outputs byte-identical) and mean pairwise similarity; per job, its own noise:
    the word at which its outputs diverge, and with several samples per run, distinct
    samples and whether the endpoint honoured n. Exits 1 if a run failed.
    """
    from runner import render
    from runner.analysis.verify import is_job_file, verify

    async def go(engine: AsyncEngine) -> VerifyReport:
        return await verify(
            engine,
            obj.settings,
            target,
            times=times,
            endpoint=endpoint,
            samples=samples,
            concurrency=concurrency,
            handle_signals=True,
        )

    report = obj.run(go, create=is_job_file(target))  # a job file is submitted first
    if fmt == "json":
        click.echo(render.verify_json(report))
    else:
        color, width = _terminal()
        click.echo(render.verify_table(report, top=top, color=color, width=width))
    if report.failed_runs or report.unfinished_runs:
        sys.exit(1)
