"""`runner sql` on both backends: the database refuses writes, views, docs, formats, errors.

Every statement that could change something is sent as a user would send it; the
test then compares a snapshot of every table, view and the schema before and after.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from datetime import datetime
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from sqlalchemy import insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.cli import main
from runner.db.models import Batch
from runner.db.readonly import ReadOnly, open_readonly
from runner.db.types import utcnow
from tests.helpers import rows, scalar
from tests.sqlkit import build_history, snapshot, sync_engine

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema.md"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

# Statements that would write if the database let them: each must be refused.
WRITES_BOTH = [
    "INSERT INTO batches (name, source_path, source_format, source_sha256, submitted_at, "
    "job_count) VALUES ('x', 'x', 'yaml', 'x', '2026-01-01T00:00:00Z', 0)",
    "UPDATE runs SET state = 'failed'",
    "DELETE FROM runs",
    "DELETE FROM alembic_version",
    "DROP TABLE attempts",
    "DROP VIEW run_results",
    "CREATE TABLE evil (a integer)",
    "CREATE TEMP TABLE evil (a integer)",
    "CREATE VIEW evil AS SELECT 1 AS a",
    "CREATE INDEX ix_evil ON runs (state)",
    "ALTER TABLE runs ADD COLUMN evil integer",
    "ALTER TABLE runs RENAME TO runs_old",
    "ATTACH DATABASE 'other.db' AS other",
    "PRAGMA writable_schema = ON",
    "SELECT 1; DELETE FROM runs",
    "WITH gone AS (DELETE FROM runs RETURNING id) SELECT count(*) FROM gone",
    "VACUUM",
    "REINDEX",
]
WRITES = {
    "sqlite": [
        "ANALYZE",
        "VACUUM INTO 'copy.db'",
        "PRAGMA query_only = OFF",
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "UPDATE sqlite_master SET sql = 'x'",
        "REPLACE INTO workers (id, hostname, pid, concurrency, started_at, heartbeat_at) "
        "VALUES ('w', 'h', 1, 1, 'x', 'x')",
        "CREATE TRIGGER evil AFTER INSERT ON runs BEGIN SELECT 1; END",
        "BEGIN",
        "DETACH DATABASE main",
    ],
    "postgresql": [
        "TRUNCATE runs",
        "SELECT nextval('runs_id_seq')",
        "SELECT setval('runs_id_seq', 1000)",
        "CREATE SEQUENCE evil",
        "GRANT ALL ON runs TO PUBLIC",
        "COMMENT ON TABLE runs IS 'evil'",
        "ANALYZE",
        "LOCK TABLE runs IN ACCESS EXCLUSIVE MODE",
    ],
}


# PostgreSQL runs this in a READ ONLY transaction: it creates a large object that the
# rollback ending every `runner sql` removes. No row and no schema changes (the
# snapshot comparison checks that).
HARMLESS = {"sqlite": [], "postgresql": ["SELECT lo_create(0)"]}


def invoke(db_url: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args], input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def query(db_url: str, sql: str) -> list[dict[str, object]]:
    code, out, err = invoke(db_url, "sql", sql, "--format", "json")
    assert code == 0, f"{sql}\n-> {err}"
    loaded: list[dict[str, object]] = json.loads(out)
    return loaded


def backend(db_url: str) -> str:
    return make_url(db_url).get_backend_name()


def doc_queries() -> list[tuple[str, str | None, str]]:
    """(title, backend or None for both, sql) of every ```sql block of docs/schema.md."""
    found = []
    pattern = re.compile(r"^```sql(?: (\w+))?\n(.*?)^```", re.S | re.M)
    text = DOCS.read_text(encoding="utf-8")
    for match in pattern.finditer(text):
        before = text[: match.start()].rstrip().splitlines()[-1]
        found.append((before, match.group(1), match.group(2)))
    return found


async def test_every_write_is_refused_by_the_database_and_nothing_changes(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    await build_history(engine, db_url, tmp_path)
    before = snapshot(db_url)
    assert before["rows:runs"] and before["rows:run_results"]
    for statement in WRITES_BOTH + WRITES[backend(db_url)]:
        code, out, err = invoke(db_url, "sql", statement)
        assert code == 1, f"{statement!r} was not refused: {out}{err}"
        assert err.startswith("error: ") and "Traceback" not in err, statement
    for statement in HARMLESS[backend(db_url)]:
        code, out, err = invoke(db_url, "sql", statement)
        assert code == 0, f"{statement!r}: {err}"
    assert snapshot(db_url) == before
    assert not (tmp_path / "other.db").exists() and not (tmp_path / "copy.db").exists()


async def test_the_refusal_is_the_database_speaking(db_url: str) -> None:
    code, _, err = invoke(db_url, "sql", "DELETE FROM runs")
    if backend(db_url) == "sqlite":
        # The authorizer denies it while SQLite prepares the statement.
        assert err.startswith("error: not authorized (this connection is read-only")
    else:
        # Parsed only, never run: it returns no rows.
        assert err.strip() == (
            "error: runner sql runs one statement that returns rows "
            "(SELECT, WITH, VALUES or TABLE) and reads only"
        )
    assert code == 1
    if backend(db_url) == "postgresql":
        code, _, err = invoke(db_url, "sql", "DELETE FROM runs RETURNING id")
        assert (code, err.strip()) == (1, "error: DELETE is not allowed: runner sql only reads")
    code, _, err = invoke(db_url, "sql", "SELECT 1; DELETE FROM runs")
    assert code == 1 and err.strip() in (
        "error: You can only execute one statement at a time.",
        "error: cannot insert multiple commands into a prepared statement",
    )


async def test_sql_errors_print_the_database_message_and_exit_non_zero(
    db_url: str, tmp_path: Path
) -> None:
    code, out, err = invoke(db_url, "sql", "SELEC 1")
    assert code == 1 and out == ""
    assert err.strip() in (
        'error: near "SELEC": syntax error',
        'error: syntax error at or near "SELEC" (at character 1)',
    )
    code, _, err = invoke(db_url, "sql", "SELECT nope FROM runs")
    assert code == 1 and "nope" in err and len(err.strip().splitlines()) == 1
    code, _, err = invoke(db_url, "sql")
    assert code == 2 and "give a statement" in err
    code, _, err = invoke(db_url, "sql", "SELECT 1", "--file", str(tmp_path / "q.sql"))
    assert code == 2 and "not both" in err
    code, _, err = invoke(db_url, "sql", "--file", str(tmp_path / "missing.sql"))
    assert code == 1 and err.strip().endswith("missing.sql: No such file or directory")
    code, _, err = invoke(db_url, "sql", "  ;  ")
    assert code == 1 and err.strip() == "error: the SQL statement is empty"
    code, _, err = invoke(db_url, "sql", "SELECT 1", "--format", "xml")
    assert code == 2 and "'xml' is not one of" in err


async def test_sql_never_creates_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    code, _, err = invoke(f"sqlite:///{missing}", "sql", "SELECT 1")
    assert code == 1 and f"no database at {missing}" in err
    assert not missing.exists()
    notes = tmp_path / "notes.db"
    notes.write_text("not a database\n", encoding="utf-8")
    code, _, err = invoke(f"sqlite:///{notes}", "sql", "SELECT 1")
    assert code == 1 and err.strip() == (
        f"error: cannot read {notes} as a SQLite database: file is not a database"
    )
    assert notes.read_text(encoding="utf-8") == "not a database\n"
    code, _, err = invoke("postgresql://nobody:secretpw@127.0.0.1:1/none", "sql", "SELECT 1")
    assert code == 1 and err.startswith("error: cannot open the database")
    assert "secretpw" not in err and "Traceback" not in err


async def test_every_format_reads_the_same_rows(db_url: str, tmp_path: Path) -> None:
    statement = (
        "SELECT 1 AS n, 'a,b \"c\"' AS s, NULL AS missing, 2.5 AS x, 'Ünïcode' AS u "
        "UNION ALL SELECT 2, 'plain', NULL, 0.25, '' ORDER BY 1"
    )
    code, out, _ = invoke(db_url, "sql", statement, "--format", "json")
    assert code == 0
    expected = [
        {"n": 1, "s": 'a,b "c"', "missing": None, "x": 2.5, "u": "Ünïcode"},
        {"n": 2, "s": "plain", "missing": None, "x": 0.25, "u": ""},
    ]
    assert json.loads(out) == expected
    code, out, _ = invoke(db_url, "sql", statement, "--format", "jsonl")
    assert [json.loads(line) for line in out.splitlines()] == expected
    code, out, _ = invoke(db_url, "sql", statement, "--format", "csv")
    assert list(csv.reader(io.StringIO(out))) == [
        ["n", "s", "missing", "x", "u"],
        ["1", 'a,b "c"', "", "2.5", "Ünïcode"],
        ["2", "plain", "", "0.25", ""],
    ]
    code, out, _ = invoke(db_url, "sql", statement)
    lines = out.splitlines()
    assert lines[0].split() == ["n", "s", "missing", "x", "u"]
    assert lines[2].split()[:2] == ["1", "a,b"] and "NULL" in lines[2]
    assert lines[-1] == "(2 rows)"
    # Repeated names stay apart in JSON; no rows is an empty array, a header in CSV.
    assert query(db_url, "SELECT 1 AS a, 2 AS a") == [{"a": 1, "a_2": 2}]
    assert query(db_url, "SELECT 1 AS a WHERE 1 = 0") == []
    code, out, _ = invoke(db_url, "sql", "SELECT 1 AS a WHERE 1 = 0", "--format", "csv")
    assert (code, out) == (0, "a\n")
    # From a file (a trailing semicolon and comments are fine) and from stdin.
    (tmp_path / "q.sql").write_text("-- how many\nSELECT 41 + 1 AS answer;\n", encoding="utf-8")
    code, out, _ = invoke(db_url, "sql", "--file", str(tmp_path / "q.sql"), "--format", "csv")
    assert (code, out) == (0, "answer\n42\n")
    code, out, _ = invoke(db_url, "sql", "-f", "-", "--format", "csv", stdin="SELECT 7 AS n")
    assert (code, out) == (0, "n\n7\n")
    # Percent signs and colons are data, not parameters.
    assert query(db_url, "SELECT '%s :x %(y)s' AS t") == [{"t": "%s :x %(y)s"}]


async def test_views_say_what_the_tables_say(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    history = await build_history(engine, db_url, tmp_path)
    assert await scalar(engine, "SELECT count(*) FROM runs") == len(
        query(db_url, "SELECT run_id FROM run_results")
    )
    results = query(
        db_url,
        f"SELECT round_number, endpoint, model, state, system_fingerprint, request_hash "
        f"FROM run_results WHERE batch_id = {history.mixed_id} ORDER BY round_number, job_key",
    )
    assert {r["round_number"] for r in results} == {1, 2, 3}
    assert {r["endpoint"] for r in results if r["round_number"] == 3} == {"local-v2"}
    assert {r["endpoint"] for r in results if r["round_number"] < 3} == {"local"}
    assert all(r["state"] == "succeeded" for r in results)

    summary = query(
        db_url,
        f"SELECT * FROM round_summary WHERE batch_id = {history.mixed_id} ORDER BY round_number",
    )
    comparisons = await rows(
        engine, "SELECT id, round_b_id, exact_match_rate FROM comparisons ORDER BY id"
    )
    assert [s["compared_round_number"] for s in summary] == [None, 1, 2]
    assert [s["comparison_id"] for s in summary] == [None, comparisons[0].id, comparisons[1].id]
    assert summary[1]["exact_match_rate"] == pytest.approx(comparisons[0].exact_match_rate)
    assert summary[1]["exact_match_rate"] == pytest.approx(4 / 6)  # the unseeded two changed
    assert summary[2]["exact_match_rate"] == 0.0  # another backend: every output differs
    for s in summary:
        assert (s["runs"], s["succeeded"], s["failed"], s["queued"]) == (6, 6, 0, 0)
        tokens = await scalar(
            engine, "SELECT sum(total_tokens) FROM runs WHERE round_id = :r", r=s["round_id"]
        )
        assert s["total_tokens"] == tokens and tokens > 0
        started = datetime.fromisoformat(str(s["first_started_at"]))
        finished = datetime.fromisoformat(str(s["last_finished_at"]))
        assert s["duration_seconds"] == pytest.approx(
            (finished - started).total_seconds(), abs=0.005
        )
    remote = query(
        db_url,
        f"SELECT round_number, succeeded, failed FROM round_summary "
        f"WHERE batch_id = {history.remote_id} ORDER BY round_number",
    )
    assert remote == [
        {"round_number": 1, "succeeded": 3, "failed": 2},
        {"round_number": 2, "succeeded": 0, "failed": 5},
    ]

    seen = {
        (r["endpoint"], r["system_fingerprint"]): r
        for r in query(db_url, "SELECT * FROM fingerprint_history")
    }
    (local,) = [key for key in seen if key[0] == "local"]
    (v2,) = [key for key in seen if key[0] == "local-v2"]
    assert set(seen) == {local, v2, ("fake", "fp_fake01")} and local[1] != v2[1]
    assert (seen[local]["runs"], seen[local]["batches"], seen[v2]["runs"]) == (12, 1, 6)
    fake = seen[("fake", "fp_fake01")]
    assert (fake["runs"], fake["response_model"]) == (3, "gpt-4o-mini-2024-01-01")
    assert str(seen[local]["first_seen"]) < str(seen[local]["last_seen"])


async def test_every_documented_query_runs_and_answers(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    await build_history(engine, db_url, tmp_path)
    queries = doc_queries()
    portable = [q for q in queries if q[1] is None]
    assert 8 <= len(portable) <= 10, "docs/schema.md should keep 8-10 example queries"
    ran = 0
    for title, only, sql in queries:
        if only is not None and only != backend(db_url):
            continue
        code, out, err = invoke(db_url, "sql", sql, "--format", "json")
        assert code == 0, f"docs/schema.md query failed: {title}\n{sql}\n-> {err}"
        assert json.loads(out), f"docs/schema.md query answered nothing: {title}\n{sql}"
        ran += 1
    assert ran == len(portable) + 1  # and the JSON example of this backend


async def test_the_documented_p95_is_the_nearest_rank_percentile(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    await build_history(engine, db_url, tmp_path)
    (title, _, sql), *_ = [q for q in doc_queries() if "p95_ms" in q[2]]
    answered = {r["endpoint"]: r for r in query(db_url, sql)}
    latencies: dict[str, list[float]] = {}
    for row in await rows(
        engine,
        "SELECT coalesce(ro.endpoint, j.endpoint) AS endpoint, r.latency_ms FROM runs r "
        "JOIN jobs j ON j.id = r.job_id JOIN rounds ro ON ro.id = r.round_id "
        "WHERE r.state = 'succeeded' AND r.reused_from_run_id IS NULL",
    ):
        latencies.setdefault(row.endpoint, []).append(row.latency_ms)
    assert set(answered) == set(latencies)
    for endpoint, values in latencies.items():
        values.sort()
        rank = math.ceil(0.95 * len(values))  # nearest rank, 1-based
        assert answered[endpoint]["p95_ms"] == pytest.approx(values[rank - 1]), title
        assert answered[endpoint]["max_ms"] == pytest.approx(values[-1])
        assert answered[endpoint]["runs"] == len(values)


async def test_json_and_timestamps_read_natively(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    await build_history(engine, db_url, tmp_path)
    if backend(db_url) == "sqlite":
        checks = query(
            db_url,
            "SELECT r.run_id, r.total_tokens, r.seed, r.output, r.finished_at, "
            "json_extract(r.response, '$.usage.total_tokens') AS response_tokens, "
            "json_extract(j.body, '$.seed') AS body_seed, "
            "json_extract(r.outputs, '$[0]') AS first_output, "
            "json_extract(j.body, '$.messages[0].role') AS role, "
            "datetime(r.finished_at) AS finished, julianday(r.started_at) AS started_day "
            "FROM run_results r JOIN jobs j ON j.id = r.job_id WHERE r.state = 'succeeded'",
        )
    else:
        checks = query(
            db_url,
            "SELECT r.run_id, r.total_tokens, r.seed, r.output, r.finished_at, "
            "(r.response::jsonb -> 'usage' ->> 'total_tokens')::int AS response_tokens, "
            "(j.body::jsonb ->> 'seed')::bigint AS body_seed, "
            "r.outputs::jsonb ->> 0 AS first_output, "
            "j.body::jsonb -> 'messages' -> 0 ->> 'role' AS role, "
            "r.finished_at AS finished, r.started_at AS started_day "
            "FROM run_results r JOIN jobs j ON j.id = r.job_id WHERE r.state = 'succeeded'",
        )
    assert len(checks) == 12 + 6 + 3  # mixed: 3 rounds of 6; remote: 3 of 5 succeeded
    for row in checks:
        assert row["response_tokens"] == row["total_tokens"] and row["total_tokens"]
        assert row["body_seed"] == row["seed"]
        assert row["first_output"] == row["output"] and row["role"] == "user"
        assert ISO_UTC.match(str(row["finished_at"])), row["finished_at"]
        assert row["finished"] is not None and row["started_day"] is not None


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 shell on this machine")
async def test_the_sqlite3_shell_opens_the_file_without_surprises(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    if backend(db_url) != "sqlite":
        pytest.skip("the sqlite3 shell reads SQLite files")
    await build_history(engine, db_url, tmp_path)
    path = make_url(db_url).database
    assert path is not None
    with anyio.fail_after(30):
        shell = await anyio.run_process(
            ["sqlite3", "-readonly", "-json", path,
             "SELECT json_extract(response, '$.usage.total_tokens') AS t, total_tokens, "
             "datetime(finished_at) AS d, round_number FROM run_results "
             "WHERE state = 'succeeded' ORDER BY run_id LIMIT 3"],
        )  # fmt: skip
    answered = json.loads(shell.stdout)
    assert len(answered) == 3
    for row in answered:
        assert row["t"] == row["total_tokens"] and re.match(r"^\d{4}-\d\d-\d\d \d\d:", row["d"])


def test_a_reader_keeps_one_snapshot_and_holds_up_no_writer(db_url: str) -> None:
    def batches(ro: ReadOnly) -> int:
        (row,) = list(ro.query("SELECT count(*) FROM batches").rows)
        return int(row[0])

    with open_readonly(db_url) as ro:
        assert batches(ro) == 0
        # A writer (BEGIN IMMEDIATE on SQLite) gets through while the reader is open...
        with sync_engine(db_url) as engine, engine.begin() as conn:
            conn.execute(
                insert(Batch).values(
                    name="w", source_path="w.yaml", source_format="yaml", source_sha256="0" * 64,
                    submitted_at=utcnow(), job_count=0,
                )
            )  # fmt: skip
        assert batches(ro) == 0  # ...and the reader still reads its own snapshot.
    with open_readonly(db_url) as ro:
        assert batches(ro) == 1
