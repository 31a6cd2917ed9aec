"""The body of every service's Alembic ``env.py``: migrations are plain SQL run through an
asyncpg-backed SQLAlchemy connection (there is no ORM model to autogenerate from), and the
helpers revisions call: :func:`execute_script` for their own SQL, :func:`apply` and
:func:`revert` for a frozen machinery step (see :mod:`shared.persistence.machinery_migrations`)."""

from __future__ import annotations

import asyncio

from alembic import context, op
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.persistence.machinery_migrations import Step


def _sqlalchemy_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"postgresql+asyncpg://{rest}" if scheme in ("postgres", "postgresql") else url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = create_async_engine(_sqlalchemy_url(url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_env() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not set")
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(_run_online(url))


def execute_script(sql: str) -> None:
    """Run several SQL statements from a migration. The asyncpg driver prepares each
    statement, and a prepared statement holds one command, so split on ``;``. (Keep
    semicolons out of string literals in migration SQL.)"""
    for statement in sql.split(";"):
        if statement.strip():
            op.execute(statement)


def apply(step: Step) -> None:
    """Run a machinery step's upgrade from a revision's ``upgrade()``."""
    execute_script(step.upgrade)


def revert(step: Step) -> None:
    """Run a machinery step's downgrade from a revision's ``downgrade()``."""
    execute_script(step.downgrade)
