"""One module per database dialect (``sqlite.py``, ``mysql.py``) behind one interface (``base.py``):
what the store says differently to each. :func:`dialect_for` picks one for an engine."""

from __future__ import annotations

from sqlalchemy import Engine

from ..rows import RunRows
from .base import Dialect
from .mysql import MysqlDialect
from .sqlite import SqliteDialect

__all__ = ["Dialect", "MysqlDialect", "SqliteDialect", "dialect_for"]


def dialect_for(engine: Engine, rows: RunRows, writer: str) -> Dialect:
    """The statements for ``engine``'s database (SQLite, or MySQL/MariaDB)."""
    name = engine.dialect.name
    if name == "sqlite":
        return SqliteDialect(engine, rows, writer)
    if name in ("mysql", "mariadb"):
        return MysqlDialect(engine, rows, writer)
    raise ValueError(f"Chronos stores jobs in SQLite or MySQL/MariaDB, not {name}")
