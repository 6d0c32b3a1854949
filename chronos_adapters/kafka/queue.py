"""The dispatch queue on Kafka: a runs topic keyed by job id, consumed by the workers as one group.

* **Order**: a run's message is keyed by its job id, so all runs of a job land in one partition, in the
  order they were put.
* **Commit rule**: offsets are committed manually, only after ``ack`` (the worker acks once the run's
  outcome is recorded in the store, or once it knows the run is not runnable). Several runs of one
  partition are in flight at once and finish in any order, so per partition the queue commits the
  highest *contiguous* acknowledged offset: an acked message behind an unacked one waits for it.
* **Redelivery**: whatever was not committed is delivered again after a restart or a rebalance (the
  partition's new owner starts at the committed offset). That is harmless: ``Store.start_run`` only moves
  a queued run to running, so a run that already started or finished is not run again.
* **Dead letters**: a message that does not decode goes straight to the dead-letter topic; a dispatch a
  consumer gives up on (``nack``) is put back at the end of its partition with a try count, and after
  ``max_tries`` goes to the dead-letter topic. Dead letters keep the original key and bytes; the headers
  say why (``chronos-dead-reason``), where from (``chronos-dead-source``: topic/partition/offset) and how
  many tries (``chronos-tries``).
* Schedulers only ``put``: the consumer (group membership) is created on the first ``get``.
* **Latency**: the consumer asks the broker to answer a fetch after at most ``fetch_max_wait_ms`` (20 ms)
  when nothing is there yet. Tansu does not answer a waiting fetch early when a record arrives, so this
  bounds the hand-off from the runs topic to a worker (aiokafka's default, 500 ms, gave ~140 ms p50).
* **Bounded start**: ``start`` gives up after ``start_timeout`` seconds (:class:`BrokerUnavailable`) and
  a worker's group join is tried again after as long, so a broker that accepts connections but does not
  answer never hangs a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from chronos_core.errors import BrokerUnavailable
from chronos_core.ports import Dispatch, DispatchQueue

from ._common import TopicKeeper, ensure_topics, unavailable
from .codec import DecodeError, decode_dispatch, encode_dispatch

__all__ = ["DEAD_REASON", "DEAD_SOURCE", "TRIES", "KafkaDispatchQueue"]

log = logging.getLogger("chronos.kafka.queue")

TRIES = "chronos-tries"
DEAD_REASON = "chronos-dead-reason"
DEAD_SOURCE = "chronos-dead-source"


@dataclass(slots=True)
class _Delivery:
    tp: TopicPartition
    generation: int
    offset: int
    tries: int
    key: bytes | None
    value: bytes


class _Partition:
    """Offsets of one assigned partition handed out and not yet committed, in offset order."""

    __slots__ = ("acked", "generation")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.acked: dict[int, bool] = {}  # insertion order == offset order

    def advance(self) -> int | None:
        """Drop the acked prefix; the offset to commit (one past the last dropped), or None."""
        last = None
        for offset, done in list(self.acked.items()):
            if not done:
                break
            del self.acked[offset]
            last = offset
        return None if last is None else last + 1


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, queue: KafkaDispatchQueue) -> None:
        self._queue = queue

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._queue._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._queue._assigned(set(assigned))


class KafkaDispatchQueue(DispatchQueue):
    """Runs topic ``topic`` (``partitions`` partitions when created here), consumer group ``group``."""

    durable = True

    def __init__(self, bootstrap: str, *, topic: str = "chronos.runs", group: str = "chronos-workers",
                 partitions: int = 12, dead_letter_topic: str | None = None, max_tries: int = 3,
                 enable_idempotence: bool = False, create_topics: bool = True,
                 replication_factor: int = 1, client_id: str = "chronos", prefetch: int = 64,
                 session_timeout_ms: int = 10_000, heartbeat_interval_ms: int = 3_000,
                 rebalance_timeout_ms: int | None = None, linger_ms: int = 2,
                 request_timeout_ms: int = 40_000, fetch_max_wait_ms: int = 20,
                 start_timeout: float = 30.0) -> None:
        if max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.partitions = partitions
        self.dead_letter_topic = dead_letter_topic or f"{topic}.dead"
        self.max_tries = max_tries
        self.enable_idempotence = enable_idempotence
        self.create_topics = create_topics
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.prefetch = prefetch
        self._consumer_opts: dict[str, Any] = {
            "session_timeout_ms": session_timeout_ms, "heartbeat_interval_ms": heartbeat_interval_ms,
            "fetch_max_wait_ms": fetch_max_wait_ms,
        }
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.start_timeout = start_timeout
        if rebalance_timeout_ms is not None:
            self._consumer_opts["rebalance_timeout_ms"] = rebalance_timeout_ms
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._ready: deque[tuple[_Delivery, Dispatch]] = deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._handed: dict[int, tuple[_Delivery, Dispatch]] = {}
        self._parts: dict[TopicPartition, _Partition] = {}
        self._generation = 0
        self._assigned_once = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._closed = False
        self.dead_lettered = 0
        self.commit_timeout = 30.0
        self.topics = TopicKeeper(bootstrap, {topic: partitions, self.dead_letter_topic: 1},
                                  replication_factor=replication_factor, client_id=f"{client_id}-admin",
                                  enabled=create_topics)

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._producer is not None:
            return
        self._closed = False
        try:
            async with asyncio.timeout(self.start_timeout):
                await self._start()
        except TimeoutError:
            raise BrokerUnavailable(f"kafka queue start: no answer within {self.start_timeout:g}s") from None
        self.topics.start()

    async def _start(self) -> None:
        if self.create_topics:
            await ensure_topics(self.bootstrap, {self.topic: self.partitions,
                                                 self.dead_letter_topic: 1},
                                replication_factor=self.replication_factor,
                                client_id=f"{self.client_id}-admin")
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-runs",
                                    acks="all", enable_idempotence=self.enable_idempotence,
                                    linger_ms=self._linger_ms, request_timeout_ms=self._request_timeout_ms)
        try:
            await producer.start()
        except (KafkaError, asyncio.CancelledError) as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise unavailable("producer start", exc) from exc
        self._producer = producer

    async def stop(self) -> None:
        self._closed = True
        self._wakeup.set()
        await self.topics.stop()
        if self._fetcher is not None:
            self._fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetcher
            self._fetcher = None
        if self._consumer is not None:
            with contextlib.suppress(KafkaError, asyncio.TimeoutError):
                await self._commit()
            await self._stop_consumer(self._consumer)
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        self._ready.clear()
        self._handed.clear()
        self._parts.clear()

    # producing ---------------------------------------------------------------------------------
    async def put(self, dispatches: Sequence[Dispatch]) -> None:
        await self.put_encoded([(d.job.id, encode_dispatch(d)) for d in dispatches])

    async def put_encoded(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Send already encoded dispatches ``(job id, message)``, in order; returns once the broker
        acknowledged every one (:class:`BrokerUnavailable` if it did not)."""
        producer = self._require_producer()

        async def send() -> None:
            futures = [await producer.send(self.topic, value, key=job_id.encode())
                       for job_id, value in messages]
            if futures:
                await asyncio.gather(*futures)
        try:
            try:
                await send()
            except KafkaError as exc:
                if not await self.topics.recreate_if_missing(exc):
                    raise
                await send()  # the topic is back: again (a message sent twice is harmless)
        except KafkaError as exc:
            raise unavailable("send", exc) from exc

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaDispatchQueue is not started")
        return self._producer

    # consuming ---------------------------------------------------------------------------------
    async def get(self) -> Dispatch:
        self._require_producer()
        if self._fetcher is None:
            self._fetcher = asyncio.create_task(self._fetch(), name="chronos-kafka-runs-fetch")
        while not self._ready:
            if self._closed:
                raise asyncio.CancelledError
            if self._fetcher.done():  # the fetch loop died: say why
                self._fetcher.result()
            self._wakeup.clear()
            await self._wakeup.wait()
        delivery, dispatch = self._ready.popleft()
        self._handed[id(dispatch)] = (delivery, dispatch)
        self._room.set()
        return dispatch

    async def ack(self, dispatch: Dispatch) -> None:
        entry = self._handed.pop(id(dispatch), None)
        if entry is None:
            return
        self._mark_done(entry[0])
        await self._commit()

    async def nack(self, dispatch: Dispatch, reason: str) -> None:
        """The consumer could not handle the dispatch: deliver it again later (at the end of its
        partition), or after ``max_tries`` tries put it on the dead-letter topic with ``reason``."""
        entry = self._handed.pop(id(dispatch), None)
        if entry is None:
            return
        delivery = entry[0]
        producer = self._require_producer()

        async def send() -> None:
            if delivery.tries + 1 >= self.max_tries:
                await self._dead_letter(delivery, reason)
            else:
                await producer.send_and_wait(self.topic, delivery.value, key=delivery.key,
                                             headers=[(TRIES, str(delivery.tries + 1).encode())])
        try:
            try:
                await send()
            except KafkaError as exc:
                if not await self.topics.recreate_if_missing(exc):
                    raise
                await send()
        except KafkaError as exc:
            # not acked: it is delivered again after a restart / rebalance
            raise unavailable("send", exc) from exc
        self._mark_done(delivery)
        await self._commit()

    @property
    def joined(self) -> bool:
        """Whether this consumer has been given its share of the partitions (after its first ``get``)."""
        return self._assigned_once.is_set()

    async def depth(self) -> int:
        """Dispatches fetched and not handed out yet (the broker-side lag is not counted)."""
        return len(self._ready)

    async def consumed_before(self) -> datetime | None:
        """A time before which every message of the runs topic has been acknowledged by the workers'
        group (the oldest timestamp among the first unacknowledged message of each partition; now if
        none waits); None if the broker cannot tell. A run whose dispatch was sent before that time and
        that is still queued was lost (a broker restarted without its data): it is not waiting in the
        log, nor in a worker's hands."""
        now = datetime.now(UTC)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin")
        probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                 client_id=f"{self.client_id}-probe")
        try:
            await admin.start()
            await probe.start()
            found = probe.partitions_for_topic(self.topic) or set()
            if not found:
                await probe.topics()
                found = probe.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(found)]
            if not tps:
                return None
            committed = await admin.list_consumer_group_offsets(self.group, partitions=tps)
            ends = await probe.end_offsets(tps)
            begins = await probe.beginning_offsets(tps)
            oldest = now
            probe.assign(tps)
            for tp in tps:
                meta = committed.get(tp)
                pos = max(meta.offset if meta is not None and meta.offset >= 0 else 0, begins[tp])
                if pos >= ends[tp]:
                    continue  # every message of the partition acknowledged
                probe.seek(tp, pos)
                record = await asyncio.wait_for(probe.getone(tp), 10)
                oldest = min(oldest, datetime.fromtimestamp(record.timestamp / 1000, UTC))
            return oldest
        except (KafkaError, TimeoutError) as exc:
            log.debug("cannot tell what the workers acknowledged: %s", exc)
            return None
        finally:
            await probe.stop()
            await admin.close()

    async def sent_before(self, run_ids: Collection[str], before: datetime) -> set[str] | None:
        """Without the outbox, what was sent when is not known here: every run is taken as sent before
        ``before`` if the workers acknowledged everything sent until then (else none is)."""
        consumed = await self.consumed_before()
        return set(run_ids) if consumed is not None and consumed >= before else set()

    async def _dead_letter(self, delivery: _Delivery, reason: str) -> None:
        producer = self._require_producer()
        headers = [
            (DEAD_REASON, reason[:2000].encode()),
            (DEAD_SOURCE, f"{delivery.tp.topic}/{delivery.tp.partition}/{delivery.offset}".encode()),
            (TRIES, str(delivery.tries + 1).encode()),
            ("chronos-dead-at", datetime.now(UTC).isoformat().encode()),
        ]
        await producer.send_and_wait(self.dead_letter_topic, delivery.value, key=delivery.key,
                                     headers=headers)
        self.dead_lettered += 1
        log.warning("dead-lettered %s/%d/%d after %d tries: %s", delivery.tp.topic, delivery.tp.partition,
                    delivery.offset, delivery.tries + 1, reason)

    def _mark_done(self, delivery: _Delivery) -> None:
        part = self._parts.get(delivery.tp)
        if part is None or part.generation != delivery.generation:
            return  # the partition was revoked since: its new owner delivers it again
        if delivery.offset in part.acked:
            part.acked[delivery.offset] = True

    async def _commit(self) -> None:
        """Commit, per partition, one past the highest contiguous acknowledged offset."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            offsets = {}
            for tp, part in self._parts.items():
                nxt = part.advance()
                if nxt is not None:
                    offsets[tp] = OffsetAndMetadata(nxt, "")
            if not offsets:
                return
            try:
                # bounded: the client retries an unknown partition (a broker that lost the topic) for
                # ever, and every ack waits for this lock
                await asyncio.wait_for(consumer.commit(offsets), self.commit_timeout)
            except TimeoutError:
                log.warning("offset commit did not complete in %gs; those runs may be delivered again",
                            self.commit_timeout)
            except KafkaError as exc:
                # a rebalance took the partition away: the new owner redelivers, which is harmless
                log.warning("offset commit failed (%s); those runs will be delivered again", exc)
                await self.topics.recreate_if_missing(exc)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        consumer = self._consumer
        offsets = {}
        for tp in revoked:
            part = self._parts.pop(tp, None)
            if part is not None:
                nxt = part.advance()
                if nxt is not None:
                    offsets[tp] = OffsetAndMetadata(nxt, "")
        self._ready = deque(item for item in self._ready if item[0].tp not in revoked)
        if offsets and consumer is not None:
            try:
                # bounded: the client retries an unknown partition (a broker that lost the topic) for
                # ever, and every ack waits for this lock
                await asyncio.wait_for(consumer.commit(offsets), self.commit_timeout)
            except TimeoutError:
                log.warning("offset commit did not complete in %gs; those runs may be delivered again",
                            self.commit_timeout)
            except KafkaError as exc:
                log.warning("offset commit on revoke failed (%s)", exc)

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        self._generation += 1
        self._assigned_once.set()
        for tp in assigned:
            if tp not in self._parts:
                self._parts[tp] = _Partition(self._generation)
        log.info("%s assigned %s", self.client_id, sorted(tp.partition for tp in assigned))

    async def _join(self) -> AIOKafkaConsumer:
        """Start the group consumer, trying again (with back-off) while the broker cannot be reached:
        a worker waits for Kafka rather than stopping."""
        backoff = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=self.group, client_id=f"{self.client_id}-worker",
                enable_auto_commit=False, auto_offset_reset="earliest", **self._consumer_opts)
            consumer.subscribe([self.topic], listener=_Listener(self))
            self._assigned_once.clear()
            self._consumer = consumer  # stop() closes it, even if it is still joining the group
            try:
                # bounded: a join that gets no answer (seen on Tansu) is started over
                await asyncio.wait_for(consumer.start(), self.start_timeout)
                return consumer
            except (KafkaError, TimeoutError) as exc:
                log.warning("cannot join consumer group %s (%s); trying again in %.1fs", self.group,
                            exc if isinstance(exc, KafkaError) else f"no answer in {self.start_timeout:g}s",
                            backoff)
                self._consumer = None
                await self._stop_consumer(consumer)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _stop_consumer(self, consumer: AIOKafkaConsumer) -> None:
        """Stop a consumer, bounded: leaving a group the broker does not answer for must not hang."""
        try:
            await asyncio.wait_for(consumer.stop(), self.start_timeout)
        except TimeoutError:
            log.warning("the runs consumer did not stop within %gs; abandoned", self.start_timeout)

    async def _joined(self, consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
        """The consumer once the group gave it its partitions (an empty share counts: more members than
        partitions). A join without an answer within ``start_timeout`` (seen on Tansu: the group's
        coordinator never completing the join) is started over with a new consumer."""
        while True:
            with contextlib.suppress(TimeoutError):
                # the coordinator joins in the consumer's own task; the listener says when it is done
                await asyncio.wait_for(self._assigned_once.wait(), self.start_timeout)
                return consumer
            log.warning("consumer group %s: no partitions assigned within %gs; joining again", self.group,
                        self.start_timeout)
            self._consumer = None
            await self._stop_consumer(consumer)
            consumer = await self._join()

    async def _fetch(self) -> None:
        consumer = await self._joined(await self._join())
        while True:
            if len(self._ready) >= self.prefetch:
                # full: wait for the workers to take some, polling now and then with the partitions
                # paused so that the group keeps this member (max_poll_interval_ms)
                consumer.pause(*consumer.assignment())
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)
                if len(self._ready) >= self.prefetch:
                    await consumer.getmany(timeout_ms=0)
                    continue
            if consumer.paused():
                consumer.resume(*consumer.paused())
            room = self.prefetch - len(self._ready)
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=room)
            except KafkaError as exc:
                log.warning("fetch failed: %s", exc)
                await self.topics.recreate_if_missing(exc)
                await asyncio.sleep(1)
                continue
            for tp, messages in batch.items():
                part = self._parts.get(tp)
                if part is None:
                    continue
                for m in messages:
                    await self._accept(tp, part, m)
            if self._ready:
                self._wakeup.set()

    async def _accept(self, tp: TopicPartition, part: _Partition, m: Any) -> None:
        tries = 0
        for k, v in m.headers or ():
            if k == TRIES:
                with contextlib.suppress(ValueError):
                    tries = int(v)
        delivery = _Delivery(tp, part.generation, m.offset, tries, m.key, m.value)
        part.acked[m.offset] = False
        try:
            dispatch = decode_dispatch(m.value)
        except DecodeError as exc:
            try:
                await self._dead_letter(delivery, f"undecodable: {exc}")
            except KafkaError as send_exc:
                log.error("cannot dead-letter %s/%d: %s", tp.partition, m.offset, send_exc)
                return  # stays unacked: retried after a restart
            part.acked[m.offset] = True
            await self._commit()
            return
        self._ready.append((delivery, dispatch))
