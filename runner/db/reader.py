"""The PostgreSQL role and function that `runner sql` runs users' SQL through.

A READ ONLY transaction is not a sandbox: with the URL's role (often a superuser) a
statement can still read and write server files, run programs (``COPY … TO PROGRAM``),
signal other backends or take locks that stop the queue. And ``SET ROLE`` to a weaker
role is no sandbox either: the statement undoes it with ``set_config('role', …)``
(SET ROLE's permission check is against the session user) or, when the login is a
superuser, with ``set_config('session_authorization', …)``.

So the statement runs inside ``runner_sql(query)``, a ``SECURITY DEFINER`` function
owned by the role ``seed_runner_reader``:

- The statement runs as that role, which has no attribute (LOGIN, SUPERUSER,
  CREATEROLE…), is a member of no role, and may only use the schema and SELECT the
  documented tables and views: ``pg_read_file``, ``lo_export``, ``pg_reload_conf``…
  are refused for lack of EXECUTE, ``pg_terminate_backend`` for lack of membership.
- PostgreSQL refuses to change ``role`` or ``session_authorization`` inside a
  security-definer function, whatever the session user is, so it cannot get back out.
- The function is STABLE: PL/pgSQL runs its query read-only, which refuses every
  utility statement (COPY, DO, LOCK, SET, CHECKPOINT, CALL…), data-modifying CTEs and
  ``SELECT … FOR UPDATE``.

``runner db upgrade`` (``ensure_reader``) creates the role once per cluster (roles are
cluster-wide; two upgrades racing are fine), and in each database the grants and the
function. Only a superuser can make a function owned by another role without being a
member of it, so the first upgrade of a database must run as a superuser (it also
repairs a changed function); later upgrades by the owner only renew the grants. An
upgrade by another role still migrates the schema, and says that `runner sql` is not
set up yet (it refuses to run until it is).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from runner.db.models import Base
from runner.errors import DatabaseError

READER = "seed_runner_reader"
FUNCTION = "runner_sql"
# The documented views (docs/schema.md); the documented tables are the models'.
VIEWS = ("run_results", "fingerprint_history", "round_summary", "round_costs")

# True when role ``r`` (a pg_roles row) could do more than what was granted to it.
POWERFUL = (
    "(r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls"
    " OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid))"
)

_CREATE_ROLE = f"""
DO $$
BEGIN
    CREATE ROLE {READER} NOLOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- made by the upgrade of another database of this cluster, maybe right now
END
$$
"""

_FUNCTION = """
CREATE OR REPLACE FUNCTION {name}(query text) RETURNS SETOF record
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
BEGIN
    RETURN QUERY EXECUTE query;
END
$$
"""


_OWNERS = """
SELECT DISTINCT r.rolname FROM pg_roles r
WHERE r.oid IN (
    (SELECT datdba FROM pg_database WHERE datname = current_database()),
    (SELECT relowner FROM pg_class WHERE oid = to_regclass('runs'))
) AND NOT r.rolsuper
"""


def readable() -> list[str]:
    """The tables and views ``seed_runner_reader`` may read: the documented ones."""
    return sorted(Base.metadata.tables) + list(VIEWS)


def ensure_reader(connection: Connection) -> str | None:
    """Create (or renew) the reader role, its grants and ``runner_sql`` in this database.

    Returns why `runner sql` cannot be used on this database yet, if it cannot: the
    first set-up needs a superuser, and a non-superuser's upgrade must not fail for it
    (the queue does not need `runner sql`).
    """
    quote = connection.dialect.identifier_preparer.quote
    schema = connection.scalar(text("SELECT current_schema()"))
    function = f"{quote(str(schema))}.{FUNCTION}"
    superuser = connection.scalar(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    )
    exists = connection.scalar(
        text("SELECT to_regprocedure(:f) IS NOT NULL"), {"f": f"{function}(text)"}
    )
    role = connection.scalar(
        text("SELECT count(*) FROM pg_roles WHERE rolname = :name"), {"name": READER}
    )
    if not superuser and not (exists and role):
        return (
            f"`runner sql` is not set up on this database: it runs users' SQL as the role "
            f"{READER} through the function {FUNCTION}(), which only a superuser can set "
            "up; run `runner db upgrade` once as a superuser (later upgrades need not). "
            "Everything else works without it"
        )
    if superuser:
        connection.execute(text(_CREATE_ROLE))
    powerful = connection.scalar(
        text(f"SELECT {POWERFUL} FROM pg_roles r WHERE r.rolname = :name"), {"name": READER}
    )
    if powerful:
        raise DatabaseError(
            f"the role {READER} must have no attributes and belong to no role: "
            f"`runner sql` runs users' SQL as it (ALTER ROLE {READER} NOSUPERUSER …; "
            f"REVOKE … FROM {READER})"
        )
    connection.execute(text(f"GRANT USAGE ON SCHEMA {quote(str(schema))} TO {READER}"))
    relations = ", ".join(quote(name) for name in readable())
    connection.execute(text(f"GRANT SELECT ON {relations} TO {READER}"))
    if superuser:  # (again: an upgrade repairs a function someone changed)
        connection.execute(text(_FUNCTION.format(name=function)))
        connection.execute(text(f"ALTER FUNCTION {function}(text) OWNER TO {READER}"))
        # Whoever may call it reads the tables: the upgrading role, and whom it grants.
        connection.execute(text(f"REVOKE ALL ON FUNCTION {function}(text) FROM PUBLIC"))
        connection.execute(text(f"GRANT EXECUTE ON FUNCTION {function}(text) TO CURRENT_USER"))
        # And the roles that own the database and its tables (they read them anyway): an
        # application role that later upgrades and queries it without being a superuser.
        for owner in connection.execute(text(_OWNERS)).scalars():
            connection.execute(
                text(f"GRANT EXECUTE ON FUNCTION {function}(text) TO {quote(str(owner))}")
            )
    return None
