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
  INTO``, ``load_extension``, ``fts3_tokenizer`` (it takes a pointer) and every pragma but a few
  harmless ones (``hard_heap_limit``, ``writable_schema``... act on the process or corrupt the file);
  the connection is in SQLite's defensive mode, strings and blobs are at most 16 MiB, and the
  attached-database limit is 1 (plain ``VACUUM`` attaches an unnamed temporary database).
  MySQL/PostgreSQL connections are confined by the grants of the user in their URL: configure a
  least-privilege user.
  MySQL/MariaDB connections never allow ``LOAD DATA LOCAL INFILE`` (it reads this host's files), whatever
  the URL says.
* Failures: an unknown connection name, a bad URL/driver, syntax errors, missing tables, constraint
  violations and missing parameters are not retryable; lost/refused connections, deadlocks and lock
  timeouts are. Passwords of every configured URL are masked in error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import sqlite3
import sys
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
                    url = make_url(self.connections[name])
                    # hide_parameters: a job's params (secrets) never in an error's text
                    engine = create_engine(url, pool_pre_ping=True, hide_parameters=True,
                                           connect_args=_client_confinement(url))
                except Exception as e:  # bad URL, unknown dialect, driver not installed
                    raise ExecutionFailed(self._mask(f"connection {name!r} is misconfigured: "
                                                     f"{type(e).__name__}: {e}"), retryable=False) from None
                if engine.dialect.is_async:  # a plain thread could never connect it (MissingGreenlet)
                    engine.dispose()
                    raise ExecutionFailed(f"connection {name!r} is misconfigured: {url.drivername} is an "
                                          f"asyncio driver; SQL jobs need a synchronous one "
                                          f"(mysql+pymysql://)", retryable=False)
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


# Pragmas a statement may use; every other one is refused. Some act on the whole process
# (hard_heap_limit/soft_heap_limit starve every SQLite database of the service, the store included;
# threads, mmap_size), some corrupt the file or open it to corruption (writable_schema, schema_version=,
# journal_mode=OFF, synchronous=OFF, cell_size_check), some name paths (temp_store_directory,
# data_store_directory) or lock the file for everyone (locking_mode), some print the file's path
# (database_list).
_PRAGMAS_ANY_ARGUMENT = frozenset({  # read-only; the argument names a table or index, or a number
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check", "collation_list",
    "function_list", "module_list", "pragma_list", "compile_options"})
_PRAGMAS_QUERY = frozenset({  # read without a value
    "page_count", "page_size", "freelist_count", "schema_version", "data_version", "encoding",
    "journal_mode", "auto_vacuum", "cache_size", "synchronous", "busy_timeout", "foreign_keys",
    "defer_foreign_keys", "recursive_triggers", "user_version", "application_id", "optimize"})
_PRAGMAS_SET = frozenset({"foreign_keys", "defer_foreign_keys", "user_version", "application_id",
                          "optimize"})
# load_extension runs native code; fts3_tokenizer with one argument prints a pointer into the process,
# with two it installs any address as a tokenizer's function table (the next fts3 table calls into it:
# a segfault, or code execution with a pointer from the first form)
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer"})
SQLITE_MAX_LENGTH = 16 * 1024 * 1024  # bytes of one string or blob (SQLite's default is 1 GB)
_DBCONFIG_DEFENSIVE = 1010
_DBCONFIG_TRUSTED_SCHEMA = 1017


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None,
                       trigger: str | None) -> int:
    if action == sqlite3.SQLITE_ATTACH and arg1 != "":  # "": VACUUM's own temporary database
        return sqlite3.SQLITE_DENY  # ATTACH 'file', VACUUM INTO 'file', ATTACH (expression)
    if action == sqlite3.SQLITE_DETACH:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:  # PRAGMA x, PRAGMA x = v, PRAGMA x(v), SELECT ... FROM pragma_x
        name = (arg1 or "").lower()
        if name in _PRAGMAS_ANY_ARGUMENT or name in (_PRAGMAS_SET if arg2 is not None else _PRAGMAS_QUERY):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def confine_sqlite(dbapi_connection: Any, connection_record: Any = None) -> None:
    """Keep every statement on a SQLite connection inside its own database file and away from the
    process: no ``ATTACH`` of another file (the store, a ``*.pth`` in site-packages...), no ``VACUUM
    INTO`` a path, no extensions, no pointer-taking functions, only harmless pragmas, SQLite's defensive
    mode (no writable schema, no writes to the shadow tables of FTS/R-tree tables, which SQLite trusts),
    strings and blobs of at most 16 MiB."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        raise ExecutionFailed(f"SQLite driver {type(dbapi_connection).__module__} cannot be confined to "
                              "its database; use the standard sqlite3 driver (sqlite:///...)",
                              retryable=False)
    dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 1)
    dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH)
    _defensive(dbapi_connection)
    dbapi_connection.set_authorizer(_sqlite_authorizer)


def _defensive(conn: sqlite3.Connection) -> None:
    """``SQLITE_DBCONFIG_DEFENSIVE`` on and ``TRUSTED_SCHEMA`` off: ``Connection.setconfig`` from Python
    3.12; on CPython 3.11 the same C call through ctypes on the connection's ``sqlite3 *`` (the first
    field after the object header), checked by reading the setting back."""
    setconfig = getattr(conn, "setconfig", None)
    if setconfig is not None:  # Python 3.12+
        setconfig(_DBCONFIG_DEFENSIVE, True)
        setconfig(_DBCONFIG_TRUSTED_SCHEMA, False)
        if conn.getconfig(_DBCONFIG_DEFENSIVE):
            return
    elif sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11):
        lib = _sqlite_library()
        handle = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
        state = ctypes.c_int(-1)
        lib.sqlite3_db_config(ctypes.c_void_p(handle), _DBCONFIG_TRUSTED_SCHEMA, 0, ctypes.byref(state))
        state.value = -1
        lib.sqlite3_db_config(ctypes.c_void_p(handle), _DBCONFIG_DEFENSIVE, 1, ctypes.byref(state))
        if state.value == 1:
            return
    raise ExecutionFailed("cannot put this SQLite connection in defensive mode (CPython 3.11 or 3.12+ "
                          "with the standard sqlite3 module is needed)", retryable=False)


@functools.cache
def _sqlite_library() -> Any:
    """The libsqlite3 the ``_sqlite3`` module uses (dlsym on the module searches what it links to)."""
    import _sqlite3

    lib = ctypes.CDLL(_sqlite3.__file__)
    lib.sqlite3_db_config.restype = ctypes.c_int
    return lib


def _client_confinement(url: Any) -> dict[str, Any]:
    """Driver options no URL may turn on: MySQL's ``LOAD DATA LOCAL INFILE`` has the *client* - this
    process - send any file it can read (the store, ``/proc/self/environ``) to the server, where the job
    selects it; with ``?local_infile=1`` in a connection URL a job read the Chronos host's files."""
    if url.get_backend_name() not in ("mysql", "mariadb"):
        return {}
    driver = url.get_driver_name()
    if driver == "mysqlconnector":
        return {"allow_local_infile": False}
    if driver in ("pymysql", "mysqldb", "mariadbconnector", "asyncmy", "aiomysql"):
        return {"local_infile": False}
    return {}


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
