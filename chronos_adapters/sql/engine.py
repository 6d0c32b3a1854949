"""How a SQL database is opened and used, by the store and by ``chronos migrate`` alike: the engine
options per dialect, the MySQL driver a plain ``mysql://`` URL gets, SQLite's connection set-up (our own
BEGIN, WAL) and its private file, the migrations' version table, and :class:`Database`: one transaction per
call in a thread pool of its own (or, for an asyncio driver such as ``mysql+asyncmy``, in a greenlet on an
event loop of its own), SQLite's writer lock, and driver errors translated into ``chronos_core`` errors
(the one place that does). The store, the migrations and the command import it; it imports none of
them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Executable, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.util.concurrency import greenlet_spawn, in_greenlet

try:
    from sqlalchemy.util.concurrency import await_
except ImportError:  # SQLAlchemy 2.0's name
    from sqlalchemy.util.concurrency import await_only as await_  # type: ignore[attr-defined,no-redef]

from chronos_core.errors import InvalidJob, RunConflict, StoreUnavailable

__all__ = ["MYSQL_DRIVER", "VERSION_TABLE", "Database", "driver_detail", "driver_rows", "engine_url",
           "is_lock_conflict", "is_sqlite", "open_engine", "run_blocking"]

T = TypeVar("T")

_MYSQL_RETRY = {1205, 1213}  # lock wait timeout, deadlock: the transaction was rolled back; run it again

log = logging.getLogger("chronos.store.sql")

VERSION_TABLE = "chronos_alembic_version"
"""Alembic's version table, named so it cannot clash with an application's own Alembic history."""


MYSQL_DRIVER = "pymysql"
"""The driver of a MySQL/MariaDB URL that names none (``mysql://``, ``mariadb://``): PyMySQL, the one
the store has always used; ``mysql+asyncmy://`` picks the compiled asyncio driver (BENCHMARKS.md says
what it saves and where it was not measured faster). SQLAlchemy's own default there would be ``mysqldb``
(mysqlclient, a C build the ``mysql`` extra does not install). A URL that names its driver keeps it."""

ASYNC_DRIVERS = frozenset({"asyncmy"})
"""The asyncio drivers :class:`Database` runs (on a loop thread, as greenlets): the tested one. Another
(``sqlite+aiosqlite``: its writer lock would block the one loop thread; ``mysql+aiomysql``: untested) is
refused with ValueError rather than run."""

# a connection broken below an asyncio driver's own errors (asyncmy lets a reset socket or a short read,
# asyncio.IncompleteReadError, through as they are): the database is gone, as with an OperationalError
_LOST = (OSError, EOFError)


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def check_driver(dialect: Any) -> None:
    """ValueError for an asyncio dialect (class or instance) that is not in :data:`ASYNC_DRIVERS`."""
    if dialect.is_async and dialect.driver not in ASYNC_DRIVERS:
        raise ValueError(f"the asyncio driver {dialect.name}+{dialect.driver} is not supported by the "
                         f"store: use mysql+asyncmy, or a synchronous driver (mysql+pymysql, sqlite)")


def engine_url(url: str | URL) -> URL:
    """``url`` with the MySQL driver spelt out: ``mysql://`` and ``mariadb://`` get :data:`MYSQL_DRIVER`
    (``mysql+pymysql://``, ``mysql+asyncmy://`` and the like stay as given)."""
    u = make_url(url)
    if u.drivername in ("mysql", "mariadb"):
        u = u.set(drivername=f"{u.drivername}+{MYSQL_DRIVER}")
    return u


def open_engine(url: str, *, pool_size: int = 5,
                options: Mapping[str, Any] | None = None) -> tuple[Engine, int]:
    """An engine for ``url`` and how many threads may use it at once (one for an in-memory SQLite
    database: a single shared connection). ``options`` override the defaults."""
    u = engine_url(url)
    check_driver(u.get_dialect())
    if u.get_dialect().driver == "asyncmy":
        _quiet_asyncmy()
    sqlite = is_sqlite(u)
    # a server closes idle connections (MySQL's wait_timeout, a restart): test each one taken from the
    # pool. A SQLite file's connection does not go stale, and the ping was a statement per transaction
    opts: dict[str, Any] = {"pool_pre_ping": not sqlite}
    threads = pool_size
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
    # never a statement's parameters in an error's text or an echo: they are the jobs' payloads and
    # notifications, with their secrets in clear, and an unexpected error is logged with its text
    # (review-secattack F2: a MySQL DataError logged the INSERT's parameters). Not an option to undo
    opts["hide_parameters"] = True
    if sqlite:
        _private_sqlite_file(u)
    engine = create_engine(u, **opts)
    if sqlite:
        _sqlite_setup(engine)
    return engine, threads


def _quiet_asyncmy() -> None:
    """asyncmy logs every server warning at WARNING with the server's text, which may quote a stored
    value (``Incorrect string value: '...'``, ``Truncated incorrect ... value``): a job's secret could
    reach the log (review-asyncmy F12). Its logger keeps only errors, unless the operator set its level."""
    logger = logging.getLogger("asyncmy")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


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


def _sqlite_setup(engine: Engine, *, query_only: bool = False) -> None:
    """pysqlite's own transaction handling is off; we emit BEGIN ourselves (IMMEDIATE for writes, so a
    claim holds the write lock from its first read), with WAL so readers do not block the writer.
    ``query_only``: the connection refuses to write (the inline reader's, :class:`Database`)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        with contextlib.suppress(Exception):  # not for in-memory databases
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        if query_only:
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("chronos_read")
                             else "BEGIN IMMEDIATE")


def driver_rows(conn: Connection, statement: Executable) -> list[Sequence[Any]]:
    """The rows of ``statement`` as the DB-API cursor returns them: driver values, no SQLAlchemy ``Row``
    and no result processors. The statement is still executed by SQLAlchemy (its compiled cache, bound
    values, error translation); only the reading is skipped, for the listings, which decode the rows
    themselves (``rows.Codec.reader``). A driver error while reading is "unavailable", as in
    :meth:`Database.guarded`."""
    result = conn.execute(statement)
    dbapi = conn.dialect.loaded_dbapi
    try:
        return list(result.cursor.fetchall())
    except (dbapi.OperationalError, dbapi.InterfaceError) as exc:
        raise StoreUnavailable(driver_detail(exc)) from None
    finally:
        result.close()


def is_lock_conflict(exc: BaseException) -> bool:
    """A MySQL lock wait timeout or deadlock: the transaction met another's row locks and was rolled
    back; the database itself is fine (``Database.guarded`` runs such a call again)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "args", (None,))[0] in _MYSQL_RETRY if orig is not None else False


# MySQL: "for column 'c' at row 1"; MariaDB's 1366: "for column `db`.`t`.`c` at row 1"
_COLUMN = re.compile(r"column (?:'|(?:`[^`]*`\.)*`)([A-Za-z_][A-Za-z0-9_]{0,63})['`]")


def too_large(exc: sa_exc.DataError) -> InvalidJob:
    """A value the store refused to hold as it is (MySQL strict mode: ``1406 Data too long for column``,
    ``1264 Out of range value``) as :class:`InvalidJob` at the column it names (422). The core bounds
    every field so that this does not happen; this is the store's last word, not the rule. The driver's
    message is not repeated: some quote the value (``1366 Incorrect string value: '\\xF0...'``).

    For job writes only (``SqlStore._job_write``): a job's definition is input, and the column is a
    field of it. Any other write's DataError (a run's outcome, a notice) stays the driver's error, with
    its parameters hidden (``hide_parameters``): it is not the caller's job that is invalid, and the
    group commit gives it to that write alone (review-secfix F2)."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "args", (None,))[0]
    found = _COLUMN.search(str(orig))
    column = found.group(1) if found else None
    loc: tuple[str, ...] = (("then" if column == "chain" else column),) if column else ()
    return InvalidJob.single(loc, f"the store cannot hold this value (MySQL error {code}: too long or "
                                  f"out of range for its column)")


def driver_detail(exc: BaseException) -> str:
    """The driver's message, never the statement or its parameters (they may hold secrets)."""
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {orig}"[:500]


class Database:
    """An open engine and what runs its calls, never on the caller's event loop: a thread pool for the
    synchronous drivers (pysqlite, PyMySQL), or for an asyncio driver (``mysql+asyncmy``) an event loop
    in a thread of its own where each call is a greenlet (SQLAlchemy's ``greenlet_spawn``: the same
    synchronous code, its I/O awaited on that loop; the calls interleave at their I/O, at most
    ``pool_size`` connections). :meth:`call` runs a function (one transaction) through :meth:`guarded`;
    :meth:`transaction` opens one; :meth:`run` and :func:`run_blocking` run other code of the engine."""

    def __init__(self, engine: Engine, threads: int, writer: threading.Lock | None = None, *,
                 inline_reads: bool = False) -> None:
        self.engine = engine
        self.sqlite = is_sqlite(engine.url)
        self.asyncio = bool(engine.dialect.is_async)
        check_driver(engine.dialect)
        # reads (:meth:`read`) run on the caller's own thread, not in the pool: a SQLite file only (its
        # reads are CPU work in this process and never wait for a writer under WAL; a server's reads
        # wait on the network, and would hold the caller's loop up meanwhile)
        if inline_reads and (not self.sqlite or self.asyncio or isinstance(engine.pool, StaticPool)):
            # (an in-memory database is one connection, shared by the pool's one thread)
            raise ValueError("inline reads are for a SQLite file's synchronous driver only")
        self.inline_reads = inline_reads
        self._inline = threading.local()  # .depth: inside an inline read on this thread
        # the inline reads' own connection, outside the pool (review-apigil F2): with every pool
        # connection held by a call (a write in SQLite's busy handler), an inline read taking one from the
        # pool would wait for it on the caller's loop, up to pool_timeout. One connection, opened on the
        # first inline read, used only by the thread that reads inline (the API's); it cannot write
        # (query_only). It gets the store's SQLite set-up, not the engine's other options.
        self._reader: Engine | None = None
        if inline_reads:
            self._reader = create_engine(engine.url, poolclass=StaticPool,
                                         connect_args={"check_same_thread": False, "timeout": 60})
            _sqlite_setup(self._reader, query_only=True)
        # SQLite: this process's writing transactions, one at a time (``writer``: shared with the other
        # Databases of this process over the same file, see SqlStore.sibling)
        self._writer = writer or threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pending: set[Future[Any]] = set()
        self._submitting = threading.Lock()  # a call is submitted, or close() begins: never both at once
        self._closed: Future[None] | None = None  # the loop's shutdown, once close() has begun
        if self.asyncio:
            # at most `threads` calls at once, the others wait for one to end (as they would in the thread
            # pool's queue), never in SQLAlchemy's pool, where after pool_timeout they would fail
            # (review-asyncmy F1); used on the loop only (it binds to the loop that first waits on it)
            self._slots = asyncio.Semaphore(max(1, threads))
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=_serve, args=(self._loop,), name="chronos-sql-loop",
                                            daemon=True)
            self._thread.start()
        else:
            self._executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="chronos-sql")

    def data_stamp(self) -> tuple[object, int] | None:
        """With ``inline_reads``: the reader connection itself and SQLite's ``PRAGMA data_version`` read
        on it. That number changes whenever any *other* connection commits - the pool's writers, a
        sibling store's, another process's - and never for the connection's own transactions (the
        reader writes nothing: query_only), so it moves on with every commit to the file; the
        connection is part of the stamp because the number is its own (a reconnected reader starts
        again). None without inline reads (a server's data version is not so cheap to read, and the
        pool's connections are many) or when it cannot be read (the read that follows says why). Called
        on the thread that reads inline: the reader connection is that thread's alone. None from inside an
        inline read (handing the connection back to its pool rolls it back: the read's transaction)."""
        if self._reader is None or getattr(self._inline, "depth", 0):
            return None
        try:
            pooled = self._reader.raw_connection()  # the pool's one connection (no SQLAlchemy
            try:  # Connection around it: 7 us where connect() took 12, the pragma itself 2)
                raw = pooled.driver_connection
                assert raw is not None
                version = raw.execute("PRAGMA data_version").fetchone()[0]
            finally:
                pooled.close()
        except (sa_exc.SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error):
            return None
        return raw, int(version)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.run(self.guarded, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`call` for ``fn`` that only reads (its transactions ``read=True``). With
        ``inline_reads`` it runs right here, on the caller's thread and loop, holding that loop up for
        as long as it takes (a page of a SQLite file: 1-3 ms): the API's loop in ``chronos serve`` has a
        thread of its own, and a read handed to a pool thread cost more in handing over the GIL than in
        reading (sqlite3 lets the GIL go at every step of a statement and each row waited to get it back
        from the busy loop thread: ARCHITECTURE.md, "Threads in chronos serve"). A write attempted
        inside it raises RuntimeError: it could wait up to 60 s for the writer lock, on the loop."""
        if not self.inline_reads:
            return await self.call(fn, *args)
        local = self._inline
        local.depth = getattr(local, "depth", 0) + 1
        try:
            return self.guarded(fn, *args)
        finally:
            local.depth -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` where this engine may be used (no error translation)."""
        if self._loop is None:
            assert self._executor is not None
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(fn, *args))
        # shielded: a cancelled caller leaves the call running to its end (it may still commit), as a pool
        # thread does with a call it has begun (the pool drops one still queued; here it runs too)
        try:
            return await asyncio.shield(asyncio.wrap_future(self._submit(fn, *args)))
        except _Escaped as e:
            raise e.exc from None

    async def _greenlet(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            try:
                return await greenlet_spawn(fn, *args)
            except (SystemExit, KeyboardInterrupt) as exc:  # out of a task they would end the loop
                raise _Escaped(exc) from None

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """``fn(*args)`` as a greenlet on the loop, once one of its ``threads`` slots is free."""
        assert self._loop is not None
        with self._submitting:
            if self._closed is not None:  # as a thread pool's submit after its shutdown
                raise RuntimeError("the database is closed")
            fut = asyncio.run_coroutine_threadsafe(self._greenlet(fn, *args), self._loop)
            self._pending.add(fut)
            fut.add_done_callback(self._pending.discard)
        return fut

    def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` from synchronous code in any thread but the asyncio driver's own loop, waiting
        for it (tests, commands). From that loop's thread (code inside a call) it raises RuntimeError:
        it would wait there for a greenlet that needs that very thread, forever (review-asyncmy F3)."""
        if self._loop is None:
            return fn(*args)
        if threading.current_thread() is self._thread:
            raise RuntimeError("Database.run_blocking from within a call of the same database would "
                               "deadlock its event loop")
        try:
            return self._submit(fn, *args).result()
        except _Escaped as e:
            raise e.exc from None

    @staticmethod
    def guarded(fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` (one transaction), again after a deadlock; driver errors as Chronos errors."""
        for attempt in range(8):
            try:
                return fn(*args)
            except sa_exc.IntegrityError as exc:  # one the caller did not expect: still a domain error
                raise RunConflict(f"conflicting write: {driver_detail(exc)}") from None
            except sa_exc.DBAPIError as exc:
                if is_lock_conflict(exc) and attempt < 7:
                    _pause(0.005 * 2 ** attempt)
                    continue
                if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or \
                        exc.connection_invalidated:
                    raise StoreUnavailable(driver_detail(exc)) from None
                raise
            except (sa_exc.TimeoutError, sa_exc.DisconnectionError) as exc:
                raise StoreUnavailable(driver_detail(exc)) from None
            except StoreUnavailable:  # an OSError too (ConnectionError): ours already, as it is
                raise
            except _LOST as exc:
                if not in_greenlet():  # a synchronous driver wraps its socket's errors: this is no such
                    raise
                raise StoreUnavailable(f"the connection to the database broke: {driver_detail(exc)}") \
                    from None
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def transaction(self, read: bool = False) -> Iterator[Connection]:
        """One transaction; on SQLite a writing one starts with ``BEGIN IMMEDIATE``, after taking the
        writer lock: SQLite admits one writer at a time, and a thread of this process waiting in
        SQLite's busy handler polls with sleeps of up to 100 ms, while one waiting on the lock is woken
        as soon as the writer before it commits."""
        writer = self.sqlite and not read
        inline: int = getattr(self._inline, "depth", 0)
        if inline and not read:
            raise RuntimeError("a writing transaction inside an inline read (Database.read): it would "
                               "wait for the writer lock on the caller's event loop")
        # as long as SQLite itself would wait (busy_timeout) before giving up
        if writer and not self._writer.acquire(timeout=60):
            raise StoreUnavailable("another transaction of this store kept the database locked")
        engine = self._reader if inline and self._reader is not None else self.engine
        try:
            with engine.connect() as conn:
                if read and self.sqlite:
                    conn.execution_options(chronos_read=True)
                with conn.begin():
                    yield conn
        finally:
            if writer:
                self._writer.release()

    async def close(self, dispose: bool = True) -> None:
        """Wait for the calls in flight, then close the pool's connections (unless not ``dispose``).

        Asyncio driver: the calls in flight, the pool's disposal and stopping the loop are one coroutine
        on the Database's own loop, which runs to its end whether or not this caller is cancelled (as a
        thread pool's shutdown goes on in its thread): a cancelled close() returns at once and cancels
        no one's call, and the loop's thread still ends, closing its loop, once they are done
        (review-asyncmy F2). Not cancelled, close() returns when that thread has ended."""
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
            if self._reader is not None:
                self._reader.dispose()
            if dispose:
                self.engine.dispose()
            return
        loop, thread = self._loop, self._thread
        assert loop is not None and thread is not None
        with self._submitting:
            if self._closed is None:
                self._closed = asyncio.run_coroutine_threadsafe(self._shutdown(dispose), loop)
            closed = self._closed
        # shielded: cancelling the wrapper would cancel the shutdown on the loop (and with it the calls)
        await asyncio.shield(asyncio.wrap_future(closed))
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    async def _shutdown(self, dispose: bool) -> None:
        """On the loop: wait for every call submitted (asyncio.wait cancels none), dispose, stop."""
        try:
            while self._pending:
                await asyncio.wait([asyncio.wrap_future(f) for f in list(self._pending)])
            if dispose:
                await greenlet_spawn(self.engine.dispose)
        finally:
            # stopped after this coroutine's end is handed on (its done callbacks come after this one)
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.stop)


class _Escaped(Exception):
    """SystemExit/KeyboardInterrupt raised in a call on the loop thread, carried to its caller to be
    raised there: raised from the loop's task, it would leave ``run_forever`` and end the loop, every
    later call waiting forever (review-asyncmy F14). A thread pool's future carries them the same way."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(type(exc).__name__)
        self.exc = exc


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The asyncio driver's loop thread: runs the loop until :meth:`Database.close` stops it, closes it."""
    try:
        loop.run_forever()
    finally:
        with contextlib.suppress(Exception):  # its threads (getaddrinfo), joined
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _pause(seconds: float) -> None:
    """Sleep before a retry: on the asyncio driver's loop without holding it up."""
    if in_greenlet():
        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def run_blocking(engine: Engine, fn: Callable[[], T]) -> T:
    """``fn()`` using ``engine`` from synchronous code (``chronos migrate``): as it is for a synchronous
    driver, for an asyncio one on an event loop of its own in a thread of its own (the caller's thread
    may be running a loop already)."""
    if not engine.dialect.is_async:
        return fn()
    with ThreadPoolExecutor(1, thread_name_prefix="chronos-sql-once") as once:
        return once.submit(lambda: asyncio.run(greenlet_spawn(fn))).result()
