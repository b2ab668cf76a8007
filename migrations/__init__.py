"""Alembic migrations, the single owner of the schema (installed as ``runner.migrations``)."""
