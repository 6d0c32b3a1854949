"""Alembic environment of the Chronos schema. Run through :func:`chronos_adapters.sql.migrate` (which
passes an open connection in ``config.attributes["connection"]``) or with ``sqlalchemy.url`` set."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from chronos_adapters.sql.engine import VERSION_TABLE
from chronos_adapters.sql.tables import metadata

config = context.config


def _url() -> str | None:
    """``-x url=...`` on the alembic command line, else ``sqlalchemy.url``."""
    return context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata,
                      version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
    else:
        engine = create_engine(_url() or "sqlite:///chronos.db", hide_parameters=True)
        try:
            with engine.connect() as conn:
                _run(conn)
        finally:
            engine.dispose()
