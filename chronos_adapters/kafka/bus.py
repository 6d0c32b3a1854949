"""The event bus on Kafka: one events topic that every process publishes to and every API instance reads,
so any instance can serve any job's live stream, whichever worker ran it.

* **Keys and order**: events are keyed by job id, so a job's events stay in one partition, in order.
* **Event ids** are ``"<partition>:<offset>"`` (the message's place in the topic; see
  :func:`parse_event_id`). Within a partition they increase in publication order; with one partition (the
  default) that is a total order over the bus.
* **Live**: each bus instance runs one consumer (no group: it reads every partition) from the end of the
  topic as it was at ``start``, and fans events out to its local subscriptions. A subscription is
  registered when ``subscribe`` returns: it gets every event the consumer reads from then on.
* **Resume**: ``subscribe(after="p:o")`` first replays from the topic (a short-lived consumer) what
  followed ``o`` in partition ``p`` up to where the live feed picked up, then the live events: no gap, no
  repeat. A subscription filtered by job or run replays only partition ``p`` (all of a job's events are
  there); an unfiltered one, with several partitions, replays the other partitions from the timestamp of
  event ``p:o`` (Kafka keeps no order across partitions, so a few events around that instant may come
  again). Replay reaches as far back as the topic's retention. An id that does not parse replays nothing.
* **Filtered feed**: each event carries its type and run id in headers (``chronos-type``,
  ``chronos-run``; the key is its job id), so the live feed decodes only events that one of this
  instance's subscriptions wants: a worker (which listens for cancel requests) or a scheduler (job
  changes, due retries, outcomes for its notifier) does not decode every run's every event (it still
  fetches them: one topic keeps the ids' single order).
* **Latency**: the feed's fetches wait at most ``fetch_max_wait_ms`` (20 ms) for records: Tansu answers a
  waiting fetch only when that time is up.
* **Slow subscribers**: each subscription buffers at most ``buffer`` live events; one that falls further
  behind is closed with :class:`SubscriptionOverflow` (carrying the last id it got, to resume from).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from chronos_core.models import Event, EventType
from chronos_core.ports import EventBus
from chronos_core.subscriptions import BufferedSubscription

from ._common import TopicKeeper, ensure_topics, unavailable
from .codec import DecodeError, decode_event, encode_event

__all__ = ["KafkaEventBus", "KafkaSubscription", "format_event_id", "parse_event_id"]

log = logging.getLogger("chronos.kafka.bus")


def _report_late(f: asyncio.Future[Any]) -> None:
    if not f.cancelled() and f.exception() is not None:
        log.error("an event was dropped: %s", f.exception())


TYPE_HEADER = "chronos-type"
RUN_HEADER = "chronos-run"


def _headers(e: Event) -> list[tuple[str, bytes]]:
    h = [(TYPE_HEADER, e.type.value.encode())]
    if e.run_id:
        h.append((RUN_HEADER, e.run_id.encode()))
    return h


def _routing(m: Any) -> tuple[bytes | None, str | None, bytes | None] | None:
    """A record's job key, event type and run id as its headers say, without decoding it; None for a
    record without the headers (from an older producer): it may be anything."""
    headers = m.headers
    if not headers:
        return None
    kind: str | None = None
    run: bytes | None = None
    for k, v in headers:
        if k == TYPE_HEADER:
            kind = v.decode()
        elif k == RUN_HEADER:
            run = v
    return m.key, kind, run


def _may_match(sub: KafkaSubscription, routing: tuple[bytes | None, str | None, bytes | None] | None,
               ) -> bool:
    """Whether an event so routed may be one ``sub`` wants (the decoded event is checked again)."""
    if routing is None:
        return True
    key, kind, run = routing
    if sub.job_key is not None and key is not None and key != sub.job_key:
        return False
    if sub.type_values is not None and kind is not None and kind not in sub.type_values:
        return False
    return sub.run_key is None or run == sub.run_key


def format_event_id(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


def parse_event_id(event_id: str) -> tuple[int, int] | None:
    """``(partition, offset)`` of an id made by this bus, or None if it is not one."""
    p, sep, o = event_id.partition(":")
    if not sep or not p.isdigit() or not o.isdigit():
        return None
    return int(p), int(o)


class KafkaSubscription(BufferedSubscription):
    def __init__(self, bus: KafkaEventBus, job_id: str | None, run_id: str | None,
                 types: Collection[EventType] | None, buffer: int, after: tuple[int, int] | None,
                 live_from: dict[int, int]) -> None:
        super().__init__(job_id=job_id, run_id=run_id, types=types, buffer=buffer,
                         detach=bus._subs.discard)
        self._bus = bus
        # what the feed compares records' keys and headers with before decoding them
        self.job_key = job_id.encode() if job_id is not None else None
        self.run_key = run_id.encode() if run_id is not None else None
        self.type_values = None if self.types is None else frozenset(t.value for t in self.types)
        self._after = after
        self._floor = after
        self._live_from = live_from
        # A resumed subscription's live events, held while its replay is read back: they follow the
        # replay, and a feed that runs ahead of the replay must not overflow a buffer its reader has
        # not been able to read yet (at most ``_held_cap``; beyond that the buffer's own limit applies).
        self._held: list[Event] | None = [] if after is not None else None
        self._held_cap = 10 * buffer

    def _offer(self, e: Event, partition: int, offset: int) -> None:
        if self._floor is not None and partition == self._floor[0] and offset <= self._floor[1]:
            return  # resumed after an id the live feed had not reached yet: already seen
        if self._held is not None and len(self._held) < self._held_cap:
            self._held.append(e)
            return
        self.offer(e)

    async def before_first(self) -> None:
        if self._after is not None:
            after, self._after = self._after, None
            try:
                self.replay.extend(await self._bus._replay(self, after, self._live_from))
            finally:
                held, self._held = self._held or [], None
                self.replay.extend(held)

class KafkaEventBus(EventBus):
    """Events topic ``topic`` (``partitions`` partitions when created here)."""

    def __init__(self, bootstrap: str, *, topic: str = "chronos.events", partitions: int = 1,
                 buffer: int = 10_000, enable_idempotence: bool = False, create_topics: bool = True,
                 replication_factor: int = 1, client_id: str = "chronos", linger_ms: int = 2,
                 publish_timeout: float = 2.0, request_timeout_ms: int = 120_000,
                 fetch_max_wait_ms: int = 20) -> None:
        self.bootstrap = bootstrap
        self.publish_timeout = publish_timeout
        self._request_timeout_ms = request_timeout_ms
        self.topic = topic
        self.partitions = partitions
        self.buffer = buffer
        self.enable_idempotence = enable_idempotence
        self.create_topics = create_topics
        self.replication_factor = replication_factor
        self.client_id = client_id
        self._linger_ms = linger_ms
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.topics = TopicKeeper(bootstrap, {topic: partitions}, replication_factor=replication_factor,
                                  client_id=f"{client_id}-admin", enabled=create_topics)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._feed: asyncio.Task[None] | None = None
        self._subs: set[KafkaSubscription] = set()
        self._pos: dict[int, int] = {}  # partition -> next offset the live feed delivers
        self._begin: dict[int, int] = {}  # partition -> first retained offset (as of start)
        self.decoded = 0  # events the live feed decoded (those no subscription here wanted were not)

    async def start(self) -> None:
        if self._producer is not None:
            return
        if self.create_topics:
            await ensure_topics(self.bootstrap, {self.topic: self.partitions},
                                replication_factor=self.replication_factor,
                                client_id=f"{self.client_id}-admin")
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-events",
                                    acks="all", enable_idempotence=self.enable_idempotence,
                                    linger_ms=self._linger_ms, request_timeout_ms=self._request_timeout_ms)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    client_id=f"{self.client_id}-events-feed", enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=self.fetch_max_wait_ms)
        try:
            await producer.start()
            await consumer.start()
            tps = await self._partitions(consumer)
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, ends[tp])
        except KafkaError as exc:
            await consumer.stop()
            await producer.stop()
            raise unavailable("event bus start", exc) from exc
        self._pos = {tp.partition: ends[tp] for tp in tps}
        self._begin = {tp.partition: begins[tp] for tp in tps}
        self._producer, self._consumer = producer, consumer
        self._feed = asyncio.create_task(self._run_feed(), name="chronos-kafka-events-feed")
        self.topics.start()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        for _ in range(50):
            await consumer.topics()  # refreshes the metadata (a fresh topic may not be in it yet)
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return [TopicPartition(self.topic, p) for p in sorted(found)]
            await asyncio.sleep(0.1)
        raise KafkaError(f"topic {self.topic!r} has no partitions")

    async def stop(self) -> None:
        await self.topics.stop()
        for s in list(self._subs):
            await s.aclose()
        if self._feed is not None:
            self._feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed
            self._feed = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish and set each event's id once the broker acknowledged it. While the broker is
        unreachable, publishing does not hold its caller (a scheduler claiming slots, a worker running a
        job) for more than ``publish_timeout``: the events stay in the producer's buffer, without ids,
        and go out in order when the broker is back (or are dropped, logged, after the producer's
        ``request_timeout_ms``). The store stays the record of what happened."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("KafkaEventBus is not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        sent: list[tuple[Event, asyncio.Future[Any]]] = []
        try:
            async with asyncio.timeout_at(deadline):
                for e in events:
                    sent.append((e, await producer.send(self.topic, encode_event(e),
                                                        key=e.job_id.encode() if e.job_id else None,
                                                        headers=_headers(e))))
        except KafkaError as exc:
            await self.topics.recreate_if_missing(exc)  # for the next publish (events are best-effort)
            raise unavailable("publish", exc) from exc
        except TimeoutError:
            log.warning("kafka unreachable: %d events not published", len(events) - len(sent))
        if not sent:
            return
        done, pending = await asyncio.wait([f for _, f in sent], timeout=max(0.0, deadline - loop.time()))
        for e, f in sent:
            if f in done:
                exc = f.exception()
                if exc is not None:
                    await self.topics.recreate_if_missing(exc)
                    raise unavailable("publish", exc)
                md = f.result()
                e.id = format_event_id(md.partition, md.offset)
        if pending:
            log.warning("kafka slow or unreachable: %d events will go out when it answers", len(pending))
            for f in pending:
                f.add_done_callback(_report_late)

    def subscribe(self, *, job_id: str | None = None, run_id: str | None = None,
                  types: Collection[EventType] | None = None,
                  after: str | None = None) -> KafkaSubscription:
        if self._consumer is None:
            raise RuntimeError("KafkaEventBus is not started")
        start = parse_event_id(after) if after is not None else None
        sub = KafkaSubscription(self, job_id, run_id, types, self.buffer, start, dict(self._pos))
        self._subs.add(sub)
        return sub

    def retains(self, after: str) -> bool | None:
        """Whether ``after`` is an id of this topic whose successors are all still retained (as of
        ``start``: the broker may have deleted old segments since)."""
        parsed = parse_event_id(after)
        if parsed is None or parsed[0] not in self._pos:
            return False
        return parsed[1] + 1 >= self._begin.get(parsed[0], 0)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    async def _run_feed(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("event feed: %s", exc)
                await self.topics.recreate_if_missing(exc)
                await asyncio.sleep(1)
                continue
            for tp, messages in batch.items():
                for m in messages:
                    self._pos[tp.partition] = m.offset + 1
                    routing = _routing(m)
                    subs = [s for s in self._subs if _may_match(s, routing)]
                    if not subs:
                        continue  # no subscription here wants it: not decoded
                    self.decoded += 1
                    try:
                        e = decode_event(m.value, format_event_id(tp.partition, m.offset))
                    except DecodeError as exc:
                        log.warning("skipping event %d:%d: %s", tp.partition, m.offset, exc)
                        continue
                    for s in subs:
                        if s.matches(e):
                            s._offer(e, tp.partition, m.offset)

    async def _replay(self, sub: KafkaSubscription, after: tuple[int, int],
                      live_from: dict[int, int]) -> list[Event]:
        """The retained events matching ``sub`` that followed ``after`` and precede the live feed."""
        partition, offset = after
        if partition not in live_from:
            return []
        filtered = sub.job_id is not None or sub.run_id is not None
        if (filtered or len(live_from) == 1) and offset + 1 >= live_from[partition]:
            return []  # the live feed starts after that id: nothing to read back
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    client_id=f"{self.client_id}-events-replay",
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        out: list[Event] = []
        try:
            await consumer.start()
            await asyncio.sleep(0)  # let the consumer's own tasks start (closing one too soon fails)
            starts = {TopicPartition(self.topic, partition): offset + 1}
            if not filtered and len(live_from) > 1:
                starts.update(await self._starts_from_time(consumer, partition, offset, live_from))
            ends = {tp: live_from[tp.partition] for tp in starts}
            todo = {tp for tp in starts if starts[tp] < ends[tp]}
            if not todo:
                return []
            consumer.assign(list(todo))
            for tp in todo:
                consumer.seek(tp, starts[tp])
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=1000)
                for tp, messages in batch.items():
                    for m in messages:
                        if m.offset >= ends[tp]:
                            todo.discard(tp)
                            break
                        try:
                            e = decode_event(m.value, format_event_id(tp.partition, m.offset))
                        except DecodeError:
                            continue
                        if sub.matches(e):
                            out.append(e)
                    if tp in todo and await consumer.position(tp) >= ends[tp]:
                        todo.discard(tp)
        except KafkaError as exc:
            raise unavailable("event replay", exc) from exc
        finally:
            await consumer.stop()
        return out

    async def _starts_from_time(self, consumer: AIOKafkaConsumer, partition: int, offset: int,
                                live_from: dict[int, int]) -> dict[TopicPartition, int]:
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
        records = batch.get(tp) or []
        others = [TopicPartition(self.topic, p) for p in live_from if p != partition]
        if not records:
            return {o: live_from[o.partition] for o in others}
        found = await consumer.offsets_for_times({o: records[0].timestamp for o in others})
        return {o: (found[o].offset if found.get(o) is not None else live_from[o.partition])
                for o in others}
