"""`runner sql` is a sandbox whatever role the URL names: escapes, timeouts, the reader role.

The test server's role is the superuser ``postgres``: the worst case. Every escape
below ran before (issue 15); each must now be refused with one line and no effect.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from runner.cli import main
from runner.db import engine as db
from tests.sqlkit import sync_engine

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema.md"
# Named in README and docs/schema.md, for administrators: part of the interface.
READER = "seed_runner_reader"
FUNCTION = "runner_sql"
ENDLESS = (
    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) AS n FROM c"
)
# The one in the issue that froze the queue for 30 s, as the table's non-superuser owner.
FREEZE = "DO $$ BEGIN LOCK TABLE runs IN ACCESS EXCLUSIVE MODE; PERFORM pg_sleep(30); END $$"


def invoke(db_url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def refused(db_url: str, statement: str) -> str:
    code, out, err = invoke(db_url, "sql", statement)
    assert code == 1 and out == "", f"{statement!r} was not refused: {out}{err}"
    assert err.startswith("error: ") and err.count("\n") == 1, f"{statement!r}: {err}"
    return err


def postgres_escapes(marker: str, victim_pid: int) -> list[str]:
    """What a READ ONLY transaction let the URL's role do (issue 15, item 1)."""
    return [
        f"COPY (SELECT 1) TO PROGRAM 'touch {marker}-program'",
        f"COPY runs TO '{marker}-copy'",
        f"SELECT lo_export(lo_from_bytea(0, 'x'), '{marker}-lo')",
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT * FROM pg_ls_dir('.')",
        f"SELECT pg_terminate_backend({victim_pid})",
        f"SELECT pg_cancel_backend({victim_pid})",
        "SELECT pg_reload_conf()",
        "CHECKPOINT",
        FREEZE,
        "LOCK TABLE runs IN ACCESS EXCLUSIVE MODE",
        "SELECT * FROM runs FOR UPDATE",
        # Getting out of the reader role, then doing any of the above.
        "RESET ROLE",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'postgres', false), pg_read_file('/etc/hostname')",
        "SELECT set_config('session_authorization', 'postgres', false)",
        "SELECT query_to_xml('SELECT set_config(''role'', ''postgres'', true)', true, false, '')",
        "SELECT 1; SELECT pg_reload_conf()",
        "CALL nothing()",
        # Not a documented table: the reader may not read it.
        "SELECT * FROM alembic_version",
    ]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the escapes are PostgreSQL's
def test_every_postgres_escape_is_refused_and_has_no_effect(db_url: str) -> None:
    marker = f"/tmp/seedrunner-escape-{uuid.uuid4().hex}"
    plain = make_url(db_url).render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as victim:
        pid = victim.info.backend_pid
        (loaded,) = victim.execute("SELECT pg_conf_load_time()").fetchone() or (None,)
        for statement in postgres_escapes(marker, pid):
            refused(db_url, statement)
        # The victim was not signalled and the configuration not reloaded.
        assert victim.execute("SELECT pg_conf_load_time()").fetchone() == (loaded,)
    for suffix in ("program", "copy", "lo"):
        assert not Path(f"{marker}-{suffix}").exists(), suffix
    assert "permission denied for function pg_read_file" in refused(
        db_url, "SELECT set_config('role', 'postgres', false), pg_read_file('/etc/hostname')"
    )
    assert refused(db_url, "SELECT set_config('role', 'postgres', false)").startswith(
        'error: cannot set parameter "role" within security-definer function'
    )
    code, out, _ = invoke(db_url, "sql", "SELECT current_user AS u", "--format", "csv")
    assert (code, out) == (0, f"u\n{READER}\n")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_statement_stops_at_the_timeout(db_url: str, how: str) -> None:
    flag = ["--timeout", "1"] if how == "flag" else []
    env = {"RUNNER_SQL_TIMEOUT": "1"} if how == "env" else None
    code, out, err = invoke(db_url, "sql", ENDLESS, *flag, env=env)
    assert (code, out) == (1, "")
    assert err == (
        "error: the statement ran longer than 1 s and was stopped "
        "(runner sql --timeout, RUNNER_SQL_TIMEOUT)\n"
    )
    code, out, _ = invoke(db_url, "sql", "SELECT 42 AS n", "--format", "csv", *flag, env=env)
    assert (code, out) == (0, "n\n42\n")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite has no roles
def test_the_reader_role_can_only_read_the_documented_tables(db_url: str) -> None:
    from runner.db.reader import readable

    documented = DOCS.read_text(encoding="utf-8")
    for name in readable():
        assert f"## {name}\n" in documented or f"### {name}" in documented, name
    with sync_engine(db_url) as engine, engine.connect() as conn:
        role = conn.execute(
            text(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
                "rolcanlogin, rolinherit, (SELECT count(*) FROM pg_auth_members m "
                "WHERE m.member = r.oid) FROM pg_roles r WHERE rolname = :r"
            ),
            {"r": READER},
        ).one()
        assert tuple(role) == (False,) * 7 + (0,)
        grants = conn.execute(
            text(
                "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                "WHERE grantee = :r AND table_catalog = current_database()"
            ),
            {"r": READER},
        ).all()
        assert sorted(grants) == sorted((name, "SELECT") for name in readable())
        function = conn.execute(
            text(
                "SELECT p.prosecdef, p.provolatile, pg_get_userbyid(p.proowner), "
                "has_function_privilege('public', p.oid, 'EXECUTE') "
                f"FROM pg_proc p WHERE p.oid = '{FUNCTION}(text)'::regprocedure"
            )
        ).one()
        assert tuple(function) == (True, "s", READER, False)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite has no roles
def test_a_missing_or_changed_reader_function_is_refused_until_upgrade(db_url: str) -> None:
    with sync_engine(db_url) as engine, engine.begin() as conn:
        conn.execute(text(f"ALTER FUNCTION {FUNCTION}(text) OWNER TO CURRENT_USER"))
    err = refused(db_url, "SELECT 1")
    assert err.startswith(f"error: {FUNCTION}() must be SECURITY DEFINER and owned by a role")
    with sync_engine(db_url) as engine, engine.begin() as conn:
        conn.execute(text(f"DROP FUNCTION {FUNCTION}(text)"))
    err = refused(db_url, "SELECT 1")
    assert err.startswith(f"error: this database has no {FUNCTION}() function")
    db.upgrade(db_url)  # at head already: renews the role, grants and function
    code, out, _ = invoke(db_url, "sql", "SELECT 1 AS n", "--format", "csv")
    assert (code, out) == (0, "n\n1\n")


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_an_upgrade_by_a_non_superuser_migrates_and_says_runner_sql_is_not_set_up(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Managed PostgreSQL services rarely hand out a superuser: the queue must not need one."""
    owner = f"seedrunner_owner_{uuid.uuid4().hex[:8]}"
    name = make_url(empty_db_url).database
    with sync_engine(empty_db_url) as engine, engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{owner}" LOGIN'))
        conn.execute(text(f'ALTER DATABASE "{name}" OWNER TO "{owner}"'))
        conn.execute(text(f'ALTER SCHEMA public OWNER TO "{owner}"'))
    as_owner = make_url(empty_db_url).set(username=owner).render_as_string(hide_password=False)
    try:
        code, out, err = invoke(as_owner, "db", "upgrade")
        assert code == 0, err
        assert "`runner sql` is not set up on this database" in err
        assert "as a superuser" in err
        # The queue works; runner sql says what to do, in one line.
        (tmp_path / "j.yaml").write_text(
            "model: m\nseed: 1\nmessages: [{role: user, content: hi}]\n"
        )
        code, _, err = invoke(as_owner, "run", "--quiet", str(tmp_path / "j.yaml"))
        assert code == 0, err
        err = refused(as_owner, "SELECT count(*) FROM runs")
        assert f"no {FUNCTION}() function" in err and "superuser" in err
        # Once set up by a superuser, the owner's own upgrades keep it.
        db.upgrade(empty_db_url)
        code, _, err = invoke(as_owner, "db", "upgrade")
        assert code == 0 and "not set up" not in err, err
        code, out, _ = invoke(as_owner, "sql", "SELECT count(*) AS n FROM runs", "--format", "csv")
        assert (code, out) == (0, "n\n1\n")
    finally:
        with sync_engine(empty_db_url) as engine, engine.begin() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" OWNER TO CURRENT_USER'))
            conn.execute(text(f'REASSIGN OWNED BY "{owner}" TO CURRENT_USER'))
            conn.execute(text(f'DROP OWNED BY "{owner}"'))
            conn.execute(text(f'DROP ROLE "{owner}"'))
