"""Commands around the runner: the local model server and the database schema."""

from __future__ import annotations

import click

from runner.cli.base import Context, main, pass_context


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
@click.option(
    "--nondeterminism",
    default=0.0,
    type=click.FloatRange(0, 1),
    show_envvar=True,
    help="Probability (0 to 1) that a seeded request leaves its seeded output at a random "
    "token after the first (the text before it is identical), as real servers do when "
    "batch-dependent GPU kernels move a logit; unseeded requests are unaffected.",
)
@click.option(
    "--fingerprints",
    callback=lambda _ctx, _param, value: _parse_fingerprints(value),
    show_envvar=True,
    help="Comma-separated system_fingerprint values, one drawn per response as OpenAI "
    "does; the text never depends on it. With --variant each value stands for one derived "
    "from it and the variant. [default: the model's own]",
)
@click.option(
    "--noise-seed",
    type=int,
    show_envvar=True,
    help="Seed of the --nondeterminism and --fingerprints draws, so they repeat "
    "[default: fresh at every start]",
)
@click.option(
    "--batch-dir",
    type=click.Path(file_okay=False),
    show_envvar=True,
    help="Directory of the Batch API's files and batch records "
    "[default: a temporary directory, removed at exit]",
)
@click.option(
    "--batch-turnaround-ms",
    default=100.0,
    type=click.FloatRange(min=0),
    show_envvar=True,
    help="How long a batch stays in_progress at least.",
)
@click.option(
    "--batch-expire-fraction",
    default=0.0,
    type=click.FloatRange(0, 1),
    show_envvar=True,
    help="Share of each batch's lines left unprocessed: the batch ends expired, its done "
    "part in the output file, the rest as batch_expired in the error file.",
)
@click.option(
    "--batch-line-error-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    show_envvar=True,
    help="Share of batch lines answered with a 500 server_error in the error file "
    "(drawn from --noise-seed).",
)
@click.option(
    "--batch-fail-validation",
    metavar="CODE[:MESSAGE]",
    show_envvar=True,
    help="Every batch fails validation with this error (e.g. 'invalid_json_line').",
)
@click.option(
    "--batch-max-requests",
    default=50_000,
    type=click.IntRange(min=1),
    show_envvar=True,
    help="Requests per batch input file; more fail validation (too_many_tasks).",
)
@click.option(
    "--batch-max-bytes",
    default=200 * 1024 * 1024,
    type=click.IntRange(min=1),
    show_envvar=True,
    help="Bytes per batch input file; more fail validation (file_too_large).",
)
@click.option(
    "--batch-log",
    type=click.Path(dir_okay=False),
    show_envvar=True,
    help="Append one JSON line per executed batch line to this file: batch_id, custom_id, time.",
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
    nondeterminism: float,
    fingerprints: tuple[str, ...] | None,
    noise_seed: int | None,
    batch_dir: str | None,
    batch_turnaround_ms: float,
    batch_expire_fraction: float,
    batch_line_error_rate: float,
    batch_fail_validation: str | None,
    batch_max_requests: int,
    batch_max_bytes: int,
    batch_log: str | None,
) -> None:
    """Serve the built-in local model over HTTP (OpenAI chat, responses, embeddings, models,
    and the Batch API: /v1/files and /v1/batches).

    Any OpenAI client can use it: base URL http://HOST:PORT/v1, any API key. Batches run in
    the background through the same model (lines of /v1/chat/completions or /v1/embeddings,
    output in shuffled order); the --batch-* options shape them for tests.
    """
    from runner.localmodel.batches import BatchOptions
    from runner.localmodel.server import ServerOptions, run_server

    try:
        batches = BatchOptions(
            dir=batch_dir,
            turnaround_ms=batch_turnaround_ms,
            expire_fraction=batch_expire_fraction,
            line_error_rate=batch_line_error_rate,
            fail_validation=batch_fail_validation,
            max_requests=batch_max_requests,
            max_bytes=batch_max_bytes,
            log=batch_log,
        )
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
            nondeterminism=nondeterminism,
            fingerprints=fingerprints,
            noise_seed=noise_seed,
            batches=batches,
            log_level="warning",
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    run_server(options)


def _parse_fingerprints(value: str | None) -> tuple[str, ...] | None:
    """``--fingerprints fp_a,fp_b`` as a tuple; every value non-empty and distinct."""
    if value is None:
        return None
    from runner.localmodel.service import check_fingerprints

    try:
        items = [item.strip() for item in value.split(",")] if value.strip() else []
        return check_fingerprints(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_envvar=True, help="Target schema revision.")
@pass_context
def db_upgrade(obj: Context, revision: str) -> None:
    """Create or upgrade the schema (needed once for PostgreSQL and after updates)."""
    from runner.db import engine as db

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
    from runner.db import engine as db

    db.require_database(obj.settings.database_url)
    engine = db.create_sync_engine(obj.settings.database_url)
    try:
        with engine.connect() as conn:
            current = db.current_revision(conn)
    finally:
        engine.dispose()
    click.echo(f"database: {current or 'empty'}\nrequired: {db.head_revision()}")
