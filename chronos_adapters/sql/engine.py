"""How a SQL database is opened, by the store and by ``chronos migrate`` alike: the engine options per
dialect, SQLite's connection set-up (our own BEGIN, WAL) and its private file, and the migrations'
version table. The store, the migrations and the command import it; it imports none of them."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

__all__ = ["VERSION_TABLE", "is_sqlite", "open_engine"]

log = logging.getLogger("chronos.store.sql")

VERSION_TABLE = "chronos_alembic_version"
"""Alembic's version table, named so it cannot clash with an application's own Alembic history."""


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def open_engine(url: str, *, pool_size: int = 5,
                options: Mapping[str, Any] | None = None) -> tuple[Engine, int]:
    """An engine for ``url`` and how many threads may use it at once (one for an in-memory SQLite
    database: a single shared connection). ``options`` override the defaults."""
    u = make_url(url)
    opts: dict[str, Any] = {"pool_pre_ping": True}
    threads = pool_size
    sqlite = is_sqlite(u)
    if sqlite:
        opts["connect_args"] = {"check_same_thread": False, "timeout": 60}
        if u.database in (None, "", ":memory:"):
            opts["poolclass"] = StaticPool  # one shared in-memory database
            threads = 1
        else:
            opts.update(pool_size=pool_size, max_overflow=0, pool_timeout=60)
    else:
        opts.update(pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_recycle=3600,
                    isolation_level="READ COMMITTED")
    opts.update(options or {})
    if sqlite:
        _private_sqlite_file(u)
    engine = create_engine(u, **opts)
    if sqlite:
        _sqlite_setup(engine)
    return engine, threads


def _private_sqlite_file(url: URL) -> None:
    """A new SQLite store file is made readable by its owner only (``0600``; SQLite gives its ``-wal`` and
    ``-shm`` files the same mode): it holds every job's secrets in clear, and with the usual umask 022
    every local user could read them. An existing file readable by others is said so in the log."""
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:") or url.query.get("uri"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        with contextlib.suppress(OSError):
            if os.stat(path).st_mode & 0o077:
                log.warning("the store %s is readable by other users (mode %o): it holds every job's "
                            "secrets; chmod 600 it", path, os.stat(path).st_mode & 0o777)
    except OSError:  # no such directory, no permission: SQLite says so when it opens it
        pass


def _sqlite_setup(engine: Engine) -> None:
    """pysqlite's own transaction handling is off; we emit BEGIN ourselves (IMMEDIATE for writes, so a
    claim holds the write lock from its first read), with WAL so readers do not block the writer."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        with contextlib.suppress(Exception):  # not for in-memory databases
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("chronos_read")
                             else "BEGIN IMMEDIATE")
