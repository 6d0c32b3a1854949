"""SQL jobs: one statement, with bound parameters, against a connection named in settings (a job never
carries a URL or a password), through SQLAlchemy in a worker thread.

* Outcome: for a statement returning rows, its columns, the first ``max_rows`` rows (each a JSON line,
  values cut at ``max_cell`` characters) and the total row count (``N rows``); otherwise ``N rows
  affected``. The statement runs in a transaction committed when it succeeds.
* Timeout/cancellation: the running statement is interrupted - ``KILL QUERY`` on MySQL/MariaDB,
  ``pg_cancel_backend`` on PostgreSQL, ``sqlite3.Connection.interrupt`` on SQLite - and the worker does
  not wait more than a few seconds for the thread; other databases finish the statement in the
  background.
* Confinement: a statement may not leave the database its connection names. On SQLite (whose "server"
  is this process, with its files) an authorizer refuses ``ATTACH`` of any file, ``DETACH``, ``VACUUM
  INTO`` and ``load_extension``, and the attached-database limit is 1 (plain ``VACUUM`` attaches an
  unnamed temporary database). MySQL/PostgreSQL connections are confined by the grants of the user in
  their URL: configure a least-privilege user.
* Failures: an unknown connection name, a bad URL/driver, syntax errors, missing tables, constraint
  violations and missing parameters are not retryable; lost/refused connections, deadlocks and lock
  timeouts are. Passwords of every configured URL are masked in error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from sqlalchemy import create_engine, event, exc, make_url, text
from sqlalchemy.engine import Connection, Engine

from chronos_core.errors import ExecutionFailed, FieldError
from chronos_core.models import Job, Run
from chronos_core.payloads import SqlPayload
from chronos_core.ports import ExecutionResult, Executor, LogSink

from ._common import Threads, mask, parse_payload

__all__ = ["SqlExecutor", "confine_sqlite"]

_INTERRUPT_WAIT = 5.0  # seconds the worker waits for an interrupted statement's thread
_FETCH = 1000
# MySQL/MariaDB server errors worth another attempt: lock wait timeout, deadlock, too many connections,
# server shutting down, query interrupted, connection killed; client errors (2000-2999) are connection
# trouble.
_MYSQL_RETRYABLE = {1040, 1053, 1203, 1205, 1213, 1317, 1927}
# PostgreSQL SQLSTATE classes worth another attempt: connection exception, transaction rollback
# (serialization failure, deadlock), insufficient resources, operator intervention.
_PG_RETRYABLE = ("08", "40", "53", "57")
_SQLITE_RETRYABLE = ("database is locked", "database table is locked", "disk i/o error", "unable to open")


class _Statement:
    """One running statement, so the event loop can interrupt it from outside its thread."""

    def __init__(self) -> None:
        self.dbapi_connection: Any = None
        self.backend_id: int | None = None
        self.cancelled = threading.Event()


class SqlExecutor(Executor):
    type_name: ClassVar[str] = "sql"

    def __init__(self, *, connections: Mapping[str, str] | None = None, max_rows: int = 1000,
                 max_cell: int = 1024) -> None:
        self.connections = dict(connections or {})
        self.max_rows = max_rows
        self.max_cell = max_cell
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._running = 0
        self._threads = Threads("chronos-sql")
        self._secrets: list[str] = list(self.connections.values())  # a URL that does not parse
        for url in self.connections.values():
            with contextlib.suppress(Exception):
                password = make_url(url).password
                if password:
                    self._secrets.append(str(password))

    @property
    def running(self) -> int:
        """Statements still executing in threads (an interrupted one is gone once its thread notices)."""
        return self._running

    async def stop(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await self._threads.run(engine.dispose)
        self._threads.close()

    def _engine(self, name: str) -> Engine:
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                try:
                    engine = create_engine(self.connections[name], pool_pre_ping=True)
                except Exception as e:  # bad URL, unknown dialect, driver not installed
                    raise ExecutionFailed(self._mask(f"connection {name!r} is misconfigured: "
                                                     f"{type(e).__name__}: {e}"), retryable=False) from None
                if engine.dialect.name == "sqlite":
                    event.listen(engine, "connect", confine_sqlite)
                self._engines[name] = engine
            return engine

    def _mask(self, message: str) -> str:
        return mask(message, self._secrets)

    def _unknown(self, name: object) -> str:
        known = ", ".join(sorted(self.connections)) or "none"
        return f"unknown SQL connection {name!r} (configured in CHRONOS_SQL_CONNECTIONS: {known})"

    def check_payload(self, payload: Mapping[str, Any]) -> list[FieldError]:
        name = payload.get("connection")
        if name in self.connections:
            return []
        return [FieldError(("payload", "connection"), self._unknown(name))]

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        p = parse_payload(SqlPayload, job.payload)
        if p.connection not in self.connections:
            raise ExecutionFailed(self._unknown(p.connection), retryable=False)
        engine = self._engine(p.connection)
        limit = min(p.max_rows, self.max_rows)
        statement = _Statement()
        await log(f"running on {p.connection!r} ({engine.dialect.name})")
        work = asyncio.ensure_future(self._threads.run(self._run, engine, p, limit, statement))
        try:
            columns, rows, count = await asyncio.shield(work)
        except asyncio.CancelledError:
            statement.cancelled.set()
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(_INTERRUPT_WAIT):
                    await self._threads.run(self._interrupt, engine, statement)
                    await work
            raise
        except ExecutionFailed:
            raise
        except Exception as e:
            raise self._classify(e, engine) from None
        if columns is None:
            await log(f"{count} rows affected")
            return ExecutionResult(ok=True)
        await log("columns: " + ", ".join(columns))
        for row in rows:
            await log(json.dumps(dict(zip(columns, (self._cell(v) for v in row), strict=False)),
                                 ensure_ascii=False, default=str))
        shown = f" (first {len(rows)} shown)" if len(rows) < count else ""
        await log(f"{count} rows{shown}")
        return ExecutionResult(ok=True)

    def _cell(self, value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).hex()
        if isinstance(value, str) and len(value) > self.max_cell:
            return value[: self.max_cell] + f"[... {len(value) - self.max_cell} more]"
        if not isinstance(value, str | int | float | bool | type(None)):
            value = str(value)
            if len(value) > self.max_cell:
                return value[: self.max_cell] + f"[... {len(value) - self.max_cell} more]"
        return value

    def _run(self, engine: Engine, p: SqlPayload, limit: int, statement: _Statement
             ) -> tuple[list[str] | None, list[tuple[Any, ...]], int]:
        """In a thread: (columns or None, the first ``limit`` rows, row count / rows affected)."""
        with self._lock:
            self._running += 1
        try:
            return self._run_statement(engine, p, limit, statement)
        finally:
            with self._lock:
                self._running -= 1

    def _run_statement(self, engine: Engine, p: SqlPayload, limit: int, statement: _Statement
                       ) -> tuple[list[str] | None, list[tuple[Any, ...]], int]:
        with engine.begin() as conn:
            self._identify(conn, statement)
            if statement.cancelled.is_set():
                raise ExecutionFailed("cancelled before the statement started", retryable=False)
            result = conn.execution_options(stream_results=True).execute(text(p.statement), p.params)
            if not result.returns_rows:
                return None, [], max(result.rowcount, 0)
            columns = list(result.keys())
            rows = [tuple(r) for r in result.fetchmany(limit)] if limit else []
            count = len(rows)
            while not statement.cancelled.is_set():
                more = result.fetchmany(_FETCH)
                if not more:
                    break
                count += len(more)
            result.close()
            return columns, rows, count

    @staticmethod
    def _identify(conn: Connection, statement: _Statement) -> None:
        dialect = conn.dialect.name
        statement.dbapi_connection = conn.connection.dbapi_connection
        if dialect in ("mysql", "mariadb"):
            statement.backend_id = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        elif dialect == "postgresql":
            statement.backend_id = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()

    @staticmethod
    def _interrupt(engine: Engine, statement: _Statement) -> None:
        dialect = engine.dialect.name
        if dialect == "sqlite" and statement.dbapi_connection is not None:
            statement.dbapi_connection.interrupt()
        elif dialect in ("mysql", "mariadb") and statement.backend_id is not None:
            with engine.connect() as conn:
                conn.exec_driver_sql(f"KILL QUERY {int(statement.backend_id)}")
        elif dialect == "postgresql" and statement.backend_id is not None:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": statement.backend_id})

    def _classify(self, e: Exception, engine: Engine) -> ExecutionFailed:
        if isinstance(e, exc.DBAPIError):
            orig = e.orig
            message = f"{type(orig).__name__}: {orig}"
            retryable = _retryable_dbapi(e, engine.dialect.name)
        elif isinstance(e, exc.StatementError):  # e.g. a bind parameter without a value
            message, retryable = f"{type(e.orig or e).__name__}: {e.orig or e}", False
            message = message.split("\n[SQL:", 1)[0]
        elif isinstance(e, exc.ArgumentError | exc.NoSuchModuleError | exc.CompileError):
            message, retryable = f"{type(e).__name__}: {e}", False
        else:
            message, retryable = f"{type(e).__name__}: {e}", True
        return ExecutionFailed(self._mask(message), retryable=retryable)


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None,
                       trigger: str | None) -> int:
    if action == sqlite3.SQLITE_ATTACH and arg1 != "":  # "": VACUUM's own temporary database
        return sqlite3.SQLITE_DENY  # ATTACH 'file', VACUUM INTO 'file', ATTACH (expression)
    if action == sqlite3.SQLITE_DETACH:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def confine_sqlite(dbapi_connection: Any, connection_record: Any = None) -> None:
    """Keep every statement on a SQLite connection inside its own database file: no ``ATTACH`` of
    another file (the store, a ``*.pth`` in site-packages...), no ``VACUUM INTO`` a path, no extensions."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        raise ExecutionFailed(f"SQLite driver {type(dbapi_connection).__module__} cannot be confined to "
                              "its database; use the standard sqlite3 driver (sqlite:///...)",
                              retryable=False)
    dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 1)
    dbapi_connection.set_authorizer(_sqlite_authorizer)


def _retryable_dbapi(e: exc.DBAPIError, dialect: str) -> bool:
    if e.connection_invalidated or isinstance(e, exc.InterfaceError):
        return True
    orig = e.orig
    if dialect in ("mysql", "mariadb"):
        code = orig.args[0] if orig is not None and orig.args and isinstance(orig.args[0], int) else None
        if code is not None:
            return code in _MYSQL_RETRYABLE or 2000 <= code < 3000
    elif dialect == "postgresql":
        state = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
        if isinstance(state, str):
            return state.startswith(_PG_RETRYABLE)
    elif dialect == "sqlite":
        return str(orig).lower().startswith(_SQLITE_RETRYABLE)
    return isinstance(e, exc.OperationalError)
