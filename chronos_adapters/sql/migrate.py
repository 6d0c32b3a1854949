"""Bring a database to the newest schema with the Alembic migrations shipped in this package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from .engine import VERSION_TABLE, open_engine, run_blocking

__all__ = ["alembic_config", "current_revision", "head_revision", "migrate", "upgrade_connection"]

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for Chronos's migrations (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade_connection(conn: Connection) -> None:
    """Upgrade the database behind ``conn`` to head. On MySQL a named lock keeps concurrent starters from
    migrating at the same time (on SQLite the migration's BEGIN IMMEDIATE does)."""
    mysql = conn.dialect.name in ("mysql", "mariadb")
    lock = f"chronos_migrate_{conn.engine.url.database}"[:64]
    if mysql:
        if conn.execute(text("SELECT GET_LOCK(:n, 120)"), {"n": lock}).scalar() != 1:
            raise TimeoutError("another process has been migrating this database for 120 s")
        conn.commit()
    try:
        command.upgrade(alembic_config(conn), "head")
        conn.commit()
    finally:
        if mysql:
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": lock})
            conn.commit()


def migrate(url: str) -> None:
    """Upgrade the database at ``url`` to the newest schema (what ``chronos migrate`` runs; with an asyncio
    driver, ``mysql+asyncmy://``, on an event loop of its own)."""
    engine, _ = open_engine(url, pool_size=1)

    def upgrade() -> None:
        try:
            with engine.connect() as conn:
                upgrade_connection(conn)
        finally:
            engine.dispose()
    run_blocking(engine, upgrade)
