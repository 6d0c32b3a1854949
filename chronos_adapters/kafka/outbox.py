"""A transactional outbox in front of the Kafka dispatch queue: dispatches are written to a SQL table
first and a relay publishes them to the runs topic, so scheduling goes on while Kafka is down (the outbox
grows) and everything is delivered once it is back.

* ``chronos_outbox`` (``chronos_adapters.sql.tables.outbox``, migration 0006: ``chronos migrate``, the
  store's start or the relay's brings the database to it), in the store's database: one row per dispatch, in
  insertion order (``seq``), with the encoded message; ``sent_at`` is set once Kafka acknowledged it.
* :func:`write_outbox` inserts the rows on a given connection: ``SqlStore(on_dispatch=write_outbox)``
  calls it inside the claim transaction (and for retries and manual triggers), so runs and their
  messages commit together. Those rows wait (``ready`` false) until the scheduler's ``put``, which comes
  after it published the runs' ``run.queued`` events, or until they are ``settle`` seconds old (the
  scheduler died in between). ``put`` also adds any dispatch the store did not write, so a store
  without the hook loses nothing to a Kafka outage either.
* :class:`OutboxRelay`: reads unsent rows oldest first, publishes them (publish, then mark sent: a crash
  in between sends a row again, which the worker's ``Store.start_run`` fencing makes harmless), retries
  with back-off while Kafka is unreachable, and deletes sent rows after ``keep_sent`` seconds. On MySQL
  one relay at a time is active (a named lock, ``GET_LOCK``), so a job's runs keep their order; the
  others stand by and take over when its connection goes.
* **Woken by every put**, in whichever process: a put in the active relay's process wakes it at once; a
  put elsewhere (another scheduler, an API's manual trigger) also sends an empty record to the wake topic
  (``<runs topic>.wake``, one partition), which the active relay reads with the queue's
  ``fetch_max_wait_ms``: rows another scheduler claimed go out within milliseconds, not at the next
  poll (``interval``, 1 s, still the safety net when a wake is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import delete, func, insert, null, or_, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from chronos_adapters.sql.engine import Database, open_engine
from chronos_adapters.sql.migrate import upgrade_connection
from chronos_adapters.sql.tables import outbox as outbox_table
from chronos_adapters.sql.tables import utc_naive
from chronos_core.errors import BackendUnavailable, StoreUnavailable
from chronos_core.ports import Dispatch, DispatchQueue

from ._common import ensure_topics
from .codec import encode_dispatch
from .queue import KafkaDispatchQueue

__all__ = ["OutboxDispatchQueue", "OutboxRelay", "outbox_table", "write_outbox"]

log = logging.getLogger("chronos.kafka.outbox")

_LOCK_NAME = "chronos_outbox_relay"


def write_outbox(conn: Connection, dispatches: Sequence[Dispatch], now: datetime, *,
                 ready: bool = False) -> None:
    """Insert the dispatches' messages on ``conn``, in the caller's transaction: the store's hook
    (``SqlStore(on_dispatch=write_outbox)``), so runs and their messages commit together.

    Rows written by the store are not ``ready``: the relay leaves them until the scheduler's ``put``
    (which comes after it published ``run.queued``, so no worker reports a run started before it was
    reported queued) or, if the scheduler died before that, until they are ``settle`` seconds old.

    Idempotent per run: a run dispatched again (released after a failed hand-off, re-dispatched while
    stuck queued) replaces its row, which is then sent again (a duplicate delivery is harmless:
    ``Store.start_run`` fences it). A second row would hit the unique run index and fail the whole
    transaction: the claim or the batch of due retries it belongs to."""
    if dispatches:
        created = utc_naive(now)
        conn.execute(_upsert(conn), [
            {"run_id": d.run.id, "job_id": d.job.id, "message": encode_dispatch(d), "ready": ready,
             "created_at": created}
            for d in dispatches])


def _upsert(conn: Connection) -> Any:
    """An insert into the outbox that, for a run already there, rewrites the row as unsent."""
    name = conn.dialect.name
    if name == "sqlite":
        lite = sqlite_insert(outbox_table)
        return lite.on_conflict_do_update(index_elements=[outbox_table.c.run_id], set_={
            "message": lite.excluded.message, "ready": lite.excluded.ready,
            "created_at": lite.excluded.created_at, "sent_at": null()})
    if name in ("mysql", "mariadb"):
        my = mysql_insert(outbox_table)
        return my.on_duplicate_key_update(message=my.inserted.message, ready=my.inserted.ready,
                                          created_at=my.inserted.created_at, sent_at=null())
    return insert(outbox_table)


class OutboxRelay:
    """Publishes the outbox to ``queue``'s runs topic. ``database`` is a SQLAlchemy URL or engine; an
    engine of an asyncio driver (``mysql+asyncmy``) is refused (ValueError): its connections belong to
    the event loop of the Database that made them, and the relay runs on a loop of its own; give the URL."""

    def __init__(self, database: str | Engine, queue: KafkaDispatchQueue, *, batch: int = 500,
                 interval: float = 1.0, keep_sent: float = 3600.0, settle: float = 1.5,
                 create_table: bool = True, wake_topic: str | None = None) -> None:
        if not isinstance(database, str) and database.dialect.is_async:
            raise ValueError("OutboxRelay needs the URL of an asyncio driver's database, not an engine: "
                             "its connections cannot cross event loops (review-asyncmy F5)")
        self._url = database if isinstance(database, str) else None
        self._engine: Engine | None = None if isinstance(database, str) else database
        self._database: Database | None = None  # what runs the calls (threads, or an asyncio driver's loop)
        self.queue = queue
        self.batch = batch
        self.interval = interval
        self.keep_sent = timedelta(seconds=keep_sent)
        self.settle = timedelta(seconds=settle)
        self.create_table = create_table
        self.sent = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock_conn: Connection | None = None
        self._next_cleanup = datetime.min.replace(tzinfo=UTC)
        self.wake_topic = wake_topic or f"{queue.topic}.wake"
        self.woken = 0  # wake records read (how often another process's put woke this relay)
        self._listener: asyncio.Task[None] | None = None
        self._signal: asyncio.Task[None] | None = None
        self._signal_again = False
        self._signals: AIOKafkaProducer | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the outbox relay is not started")
        return self._engine

    @property
    def _mysql(self) -> bool:
        return self.engine.dialect.name in ("mysql", "mariadb")

    async def open(self) -> None:
        """Connect (the engine the store would open: ``chronos_adapters.sql.engine.open_engine``) and,
        with ``create_table``, bring the database to the newest schema, the outbox table included
        (without starting the relay loop)."""
        if self._engine is None and self._url is not None:
            self._engine, _ = open_engine(self._url, pool_size=3)
        if self._database is None:
            self._database = Database(self.engine, 3)
        if self.create_table:
            try:
                await self._db(self._migrate)
            except BaseException:  # nothing closes a relay that never opened: its threads/loop, now
                database, self._database = self._database, None  # (review-asyncmy F13)
                if database is not None:
                    with contextlib.suppress(Exception):
                        await database.close(dispose=self._url is not None)
                if self._url is not None:
                    self._engine = None
                raise

    def _migrate(self) -> None:
        with self.engine.connect() as conn:
            upgrade_connection(conn)

    def _reading(self) -> Connection:
        """A connection for reads only: on SQLite its transactions begin deferred, so the relay's polls
        do not take the write lock the store's claims wait for."""
        conn = self.engine.connect()
        if self.engine.dialect.name == "sqlite":
            conn.execution_options(chronos_read=True)
        return conn

    async def start(self) -> None:
        if self._task is not None:
            return
        await self.open()
        self._task = asyncio.create_task(self._loop(), name="chronos-outbox-relay")

    async def ensure_wake_topic(self) -> None:
        """Create the wake topic if needed and open the producer of wake signals: a producer of its own,
        so that whatever the broker answers for the wake topic never holds up or fails a dispatch's
        send (seen on Tansu: a fresh topic's NotLeaderForPartition failed the batch it shared a request
        with). Until both are there, puts send no wake signal."""
        producer = None
        try:
            if self.queue.create_topics:
                await ensure_topics(self.queue.bootstrap, {self.wake_topic: 1},
                                    replication_factor=self.queue.replication_factor,
                                    client_id=f"{self.queue.client_id}-admin")
            producer = AIOKafkaProducer(bootstrap_servers=self.queue.bootstrap, acks=1, linger_ms=0,
                                        client_id=f"{self.queue.client_id}-outbox-signal")
            await asyncio.wait_for(producer.start(), self.queue.start_timeout)
            self._signals = producer
        except (BackendUnavailable, KafkaError, TimeoutError) as exc:
            # the broker is down: puts elsewhere wake the relay by its poll
            log.warning("outbox wake topic %s not available (%s): the relay polls", self.wake_topic, exc)
            if producer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 5)

    @property
    def leading(self) -> bool:
        """Whether this relay is the active one and running (its own wake is enough for its puts)."""
        return self._task is not None and (not self._mysql or self._lock_conn is not None)

    def signal(self) -> None:
        """Wake the active relay, in whichever process it runs: an empty record on the wake topic, sent
        in the background (a put never waits for the broker); signals while one is on its way coalesce."""
        if self._signals is None:
            return
        if self._signal is not None and not self._signal.done():
            self._signal_again = True
            return
        self._signal = asyncio.create_task(self._send_signal(), name="chronos-outbox-signal")

    async def _send_signal(self) -> None:
        while True:
            self._signal_again = False
            try:
                assert self._signals is not None
                await asyncio.wait_for(self._signals.send_and_wait(self.wake_topic, b""), 5.0)
            except Exception as exc:  # the broker is down: the active relay's poll finds the rows
                log.debug("outbox wake signal not sent: %s", exc)
                return
            if not self._signal_again:
                return

    def _listen(self, on: bool) -> asyncio.Task[None] | None:
        """Read the wake topic while this relay leads (and only then); the task stopped, if any."""
        if on and self._listener is None:
            self._listener = asyncio.create_task(self._read_wakes(), name="chronos-outbox-wakes")
        elif not on and self._listener is not None:
            task, self._listener = self._listener, None
            task.cancel()
            return task
        return None

    async def _read_wakes(self) -> None:
        tp = TopicPartition(self.wake_topic, 0)
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.queue.bootstrap, group_id=None,
                                        client_id=f"{self.queue.client_id}-outbox-wakes",
                                        enable_auto_commit=False,
                                        fetch_max_wait_ms=self.queue.fetch_max_wait_ms)
            try:
                await consumer.start()
                consumer.assign([tp])
                await consumer.seek_to_end(tp)
                while True:
                    batch = await consumer.getmany(timeout_ms=1000)
                    if batch:
                        self.woken += sum(len(m) for m in batch.values())
                        self._wake.set()
            except KafkaError as exc:
                log.debug("outbox wake topic: %s; reading it again in 1s", exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 5.0)
            await asyncio.sleep(1)

    async def stop(self) -> None:
        for task in (self._listen(False), self._signal):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._signals is not None:
            producer, self._signals = self._signals, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            await self._run(_end_session, conn)
        if self._database is not None:
            database, self._database = self._database, None
            await database.close(dispose=self._url is not None)
        if self._url is not None and self._engine is not None:
            self._engine = None

    def wake(self) -> None:
        self._wake.set()

    def run_blocking(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, code of its own on :attr:`engine`, from synchronous code (tests, tools), after
        :meth:`open`: on the asyncio driver's loop for ``mysql+asyncmy`` (see ``SqlStore.run_blocking``)."""
        if self._database is None:
            raise RuntimeError("the outbox relay is not open")
        return self._database.run_blocking(fn, *args)

    async def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` where the engine may be used: a thread, or the asyncio driver's loop."""
        if self._database is None:
            raise RuntimeError("the outbox relay is not open")
        return await self._database.run(fn, *args)

    async def _db(self, fn: Any) -> Any:
        try:
            return await self._run(fn)
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            raise StoreUnavailable(f"outbox: {type(exc).__name__}") from None
        except StoreUnavailable:  # an OSError too: as it is
            raise
        except (OSError, EOFError) as exc:  # an asyncio driver's broken connection (see engine._LOST)
            raise StoreUnavailable(f"outbox: {type(exc).__name__}") from None

    async def write(self, dispatches: Sequence[Dispatch], now: datetime | None = None) -> None:
        """Hand dispatches to the relay: mark the rows the store wrote ready, and add (ready) those it
        did not write (a store without the hook, a caller the hook does not cover), in one
        transaction. A run already in the outbox is not added twice."""
        if not dispatches:
            return
        when = now or datetime.now(UTC)
        ids = [d.run.id for d in dispatches]

        def go() -> None:
            with self.engine.begin() as conn:
                conn.execute(update(outbox_table).where(outbox_table.c.run_id.in_(ids),
                                                        outbox_table.c.ready.is_(False))
                             .values(ready=True))
                there = set(conn.scalars(select(outbox_table.c.run_id)
                                         .where(outbox_table.c.run_id.in_(ids))))
                write_outbox(conn, [d for d in dispatches if d.run.id not in there], when, ready=True)
        await self._db(go)

    async def sent_before(self, run_ids: Collection[str], before: datetime) -> set[str]:
        """Of these runs, those whose row was sent before ``before`` (and not written again since), or
        has no row any more (sent rows are deleted ``keep_sent`` after they were sent)."""
        ids = list(run_ids)
        cut = utc_naive(before)

        def read() -> set[str]:
            unsent_or_recent: set[str] = set()
            with self._reading() as conn:
                for i in range(0, len(ids), 500):
                    q = select(outbox_table.c.run_id).where(
                        outbox_table.c.run_id.in_(ids[i:i + 500]),
                        or_(outbox_table.c.sent_at.is_(None), outbox_table.c.sent_at >= cut))
                    unsent_or_recent.update(conn.scalars(q))
            return set(ids) - unsent_or_recent
        result: set[str] = await self._db(read)
        return result

    async def pending(self) -> int:
        """Rows not sent yet."""
        def count() -> int:
            with self._reading() as conn:
                q = select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
                return int(conn.scalar(q) or 0)
        return int(await self._db(count))

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows, oldest first; how many. :class:`StoreUnavailable` when the
        database cannot be reached, :class:`BrokerUnavailable` when Kafka cannot (nothing is marked sent
        then)."""
        settled = utc_naive(datetime.now(UTC) - self.settle)

        def read() -> list[Any]:
            with self._reading() as conn:
                q = (select(outbox_table.c.seq, outbox_table.c.job_id, outbox_table.c.message)
                     .where(outbox_table.c.sent_at.is_(None),
                            or_(outbox_table.c.ready.is_(True), outbox_table.c.created_at < settled))
                     .order_by(outbox_table.c.seq).limit(self.batch))
                return list(conn.execute(q))
        rows = await self._db(read)
        if not rows:
            return 0
        await self.queue.put_encoded([(r.job_id, r.message) for r in rows])
        now = datetime.now(UTC)

        def mark() -> None:
            with self.engine.begin() as conn:
                conn.execute(update(outbox_table).where(outbox_table.c.seq.in_([r.seq for r in rows]))
                             .values(sent_at=utc_naive(now)))
                if now >= self._next_cleanup:
                    self._next_cleanup = now + min(self.keep_sent, timedelta(minutes=1))
                    conn.execute(delete(outbox_table).where(
                        outbox_table.c.sent_at < utc_naive(now - self.keep_sent)))
        await self._db(mark)
        self.sent += len(rows)
        return len(rows)

    async def _lead(self) -> bool:
        """Whether this relay is the active one (always, except on MySQL with another relay active)."""
        if not self._mysql:
            return True
        # one lock per database: deployments sharing a server must not block each other
        name = f"{_LOCK_NAME}:{self.engine.url.database or ''}"[:64]
        if self._lock_conn is not None:
            held = self._lock_conn

            def still_ours() -> bool:
                # The lock lives as long as the session, and that can end under us: the server's
                # wait_timeout on an idle connection (8 h by default), a KILL, a proxy's idle timeout, a
                # failover. Then another relay takes the lock while this one would go on believing it
                # leads: two active relays, a job's runs out of order (review-scaleout F4). Asking
                # here, at every wake and poll, also keeps the session from ever being idle that long.
                ours = held.scalar(text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()"), {"name": name})
                held.commit()
                return bool(ours)
            if await self._db(still_ours):  # a lost connection: StoreUnavailable, the loop drops it
                return True
            self._lock_conn = None
            self._listen(False)
            await self._run(_end_session, held)
            log.warning("this outbox relay lost its lock (its database session ended): it stands by")

        def take() -> Connection | None:
            conn = self.engine.connect()
            got = conn.scalar(text("SELECT GET_LOCK(:name, 0)"), {"name": name})
            conn.commit()
            if got == 1:
                return conn
            conn.close()
            return None
        self._lock_conn = await self._db(take)
        if self._lock_conn is not None:
            log.info("this outbox relay is now the active one")
        return self._lock_conn is not None

    async def _loop(self) -> None:
        backoff = 0.0
        while True:
            # Cleared before reading, not after: a put that lands while a batch is read or sent wakes
            # the next pass at once (cleared after the batch, its wake was lost and its rows waited for
            # the next poll, ``interval``: up to 1 s of start lag).
            self._wake.clear()
            try:
                lead = await self._lead()
                self._listen(lead)
                if lead:
                    while await self.relay_once() == self.batch:
                        pass
                backoff = 0.0
            except BackendUnavailable as exc:  # the database or the broker: back off, try again
                self.failures += 1
                backoff = min(max(backoff * 2, 0.2), 5.0)
                self._wake.clear()  # puts during an outage do not cut the back-off short
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                if self._lock_conn is not None:  # the database may have dropped our lock with it
                    conn, self._lock_conn = self._lock_conn, None
                    self._listen(False)
                    await self._run(_end_session, conn)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff or self.interval)


def _end_session(conn: Connection) -> None:
    """Close the lock's connection for real: a MySQL named lock lives as long as its session, so handing
    the connection back to the pool would keep the lock held by an idle pooled connection and no relay
    (this one included, on another connection) could lead again."""
    with contextlib.suppress(Exception):
        conn.invalidate()
    with contextlib.suppress(Exception):
        conn.close()


class OutboxDispatchQueue(DispatchQueue):
    """The dispatch queue for a scaled-out deployment: ``put`` hands the dispatches to the outbox
    (:meth:`OutboxRelay.write`), the relay publishes them, and workers ``get`` / ``ack`` / ``nack`` from
    Kafka as with :class:`KafkaDispatchQueue`. ``run_relay``: run the relay loop in this process (the
    scheduler's); otherwise only write to the outbox."""

    durable = True

    def __init__(self, queue: KafkaDispatchQueue, relay: OutboxRelay, *, run_relay: bool = True) -> None:
        self.queue = queue
        self.relay = relay
        self.run_relay = run_relay

    async def start(self) -> None:
        await self.queue.start()
        await self.relay.ensure_wake_topic()
        if self.run_relay:
            await self.relay.start()
        else:
            await self.relay.open()

    async def stop(self) -> None:
        await self.relay.stop()
        await self.queue.stop()

    async def put(self, dispatches: Sequence[Dispatch]) -> None:
        await self.relay.write(dispatches)
        self.relay.wake()
        if not self.relay.leading:  # the active relay is in another process (or none runs here)
            self.relay.signal()

    async def get(self) -> Dispatch:
        return await self.queue.get()

    async def ack(self, dispatch: Dispatch) -> None:
        await self.queue.ack(dispatch)

    async def nack(self, dispatch: Dispatch, reason: str) -> None:
        await self.queue.nack(dispatch, reason)

    async def depth(self) -> int | None:
        return await self.relay.pending()

    async def sent_before(self, run_ids: Collection[str], before: datetime) -> set[str] | None:
        """Runs sent before ``before`` and before what the workers have acknowledged: a run sent since
        may be waiting in a backlog the workers have not reached (not lost)."""
        consumed = await self.queue.consumed_before()
        if consumed is None:  # the broker cannot tell: nothing is taken for lost
            return set()
        return await self.relay.sent_before(run_ids, min(before, consumed))
