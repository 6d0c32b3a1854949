"""The SSE fan-out (chronos_app.api.fanout) against fake socket transports: one write per client per
batch, one bus subscription per filter, a hand-over from a stream's own subscription without gap or
repeat, a bounded output per client (a client that cannot keep up is told and disconnected), the end of a
job's streams at its deletion and of every stream when the bus closes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chronos_adapters.memory import MemoryEventBus
from chronos_app.api.fanout import SseClient, SseHub
from chronos_app.api.frames import EventFrames
from chronos_core import Event, EventType
from chronos_core.subscriptions import BufferedSubscription

T = datetime(2027, 1, 1, tzinfo=UTC)


class FakeTransport(asyncio.WriteTransport):
    """A socket's transport that keeps what was written; ``stalled``: nothing leaves (a client that
    does not read), so the write buffer grows."""

    def __init__(self, stalled: bool = False) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.stalled = stalled
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.writes)) if self.stalled else 0

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def body(self) -> bytes:
        """The chunks' contents, joined."""
        out = b""
        for w in self.writes:
            size, _, rest = w.partition(b"\r\n")
            assert rest[int(size, 16):] == b"\r\n", w  # each write is one whole chunk
            out += rest[:int(size, 16)]
        return out

    def ids(self) -> list[int]:
        return [int(i) for i in re.findall(rb"^id: (\d+)\r$", self.body(), re.M)]

    def kinds(self) -> list[str]:
        return [k.decode() for k in re.findall(rb"^event: (\S+)\r$", self.body(), re.M)]


async def _never(message: Any) -> None:
    raise AssertionError("a client with a transport does not use the ASGI send")


def ev(type: EventType = EventType.RUN_LOG, job: str = "j1", **data: Any) -> Event:
    return Event(type=type, time=T, job_id=job, run_id="r1" if type.value.startswith("run.") else None,
                 data=data)


def hub_of(bus: MemoryEventBus, **options: Any) -> SseHub:
    return SseHub(bus, EventFrames(), ping=3600, exiting=lambda: False, **options)


def connect(hub: SseHub, bus: MemoryEventBus, *, job_id: str | None = None,
            types: set[EventType] | None = None, stalled: bool = False, after: str | None = None
            ) -> tuple[SseClient, FakeTransport, BufferedSubscription]:
    """A stream as the monitor starts one: its own subscription, then (``join``) its group."""
    t = FakeTransport(stalled)
    client = SseClient(_never, t, hub.limit)
    hub.clients[client] = None
    sub = bus.subscribe(job_id=job_id, types=types, after=after)
    return client, t, sub


async def join(hub: SseHub, client: SseClient, sub: BufferedSubscription, job_id: str | None = None,
               types: set[EventType] | None = None) -> None:
    await sub.start()
    assert hub.join(client, sub, job_id, None if types is None else frozenset(types))


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while True:
            if check():
                return
            await asyncio.sleep(0.001)


async def test_a_batch_of_events_is_one_write_per_client_on_one_bus_subscription() -> None:
    bus = MemoryEventBus()
    hub = hub_of(bus)
    clients = [connect(hub, bus) for _ in range(50)]
    for c, _, sub in clients:
        await join(hub, c, sub)
    assert bus.subscribers == 1  # the group's: the streams' own were closed at the hand-over
    await bus.publish([ev(line=f"l{i}") for i in range(100)])  # what one engine step publishes
    await until(lambda: all(t.writes for _, t, _ in clients))
    for c, t, _ in clients:
        assert len(t.writes) == 1 and c.writes == 1  # the 100 frames in one chunk
        assert t.ids() == list(range(1, 101))
        assert t.body().startswith(b"retry: 2000\r\nid: 1\r\n")  # the first frame says the retry delay
    await bus.publish([ev(line="more")])
    await until(lambda: all(len(t.writes) == 2 for _, t, _ in clients))
    assert all(t.ids()[-1] == 101 and t.body().count(b"retry:") == 1 for _, t, _ in clients)
    assert len({id(t.writes[1]) for _, t, _ in clients}) == 1  # one chunk object written to every socket
    hub.close()


async def test_the_hand_over_loses_and_repeats_nothing() -> None:
    """B subscribes, events arrive (the group already holds them, unwritten), B catches up on its own
    subscription and joins in the same step: each event reaches B once."""
    bus = MemoryEventBus()
    hub = hub_of(bus)
    a, ta, sub_a = connect(hub, bus)
    await join(hub, a, sub_a)
    b, tb, sub_b = connect(hub, bus)
    await bus.publish([ev(line="1"), ev(line="2")])  # in A's group and in B's own subscription
    await sub_b.start()
    frames = b"".join(hub.frames.frame(e) for e in sub_b.take())  # B's catch-up, as the monitor does it
    assert b.write(frames)
    assert hub.join(b, sub_b, None, None)
    await bus.publish([ev(line="3")])
    await until(lambda: ta.ids()[-1:] == [3] and tb.ids()[-1:] == [3])
    assert ta.ids() == [1, 2, 3] and tb.ids() == [1, 2, 3]
    # resumed from id 1 while the group goes on: the retained 2 and 3 once, then live
    c, tc, sub_c = connect(hub, bus, after="1")
    await sub_c.start()
    assert c.write(b"".join(hub.frames.frame(e) for e in sub_c.take()))
    await bus.publish([ev(line="4")])
    assert hub.join(c, sub_c, None, None)  # 4 is in C's own subscription and the group's batch
    await until(lambda: tc.ids()[-1:] == [4] and ta.ids()[-1:] == [4])
    assert tc.ids() == [2, 3, 4]
    hub.close()


async def test_streams_of_different_filters_get_only_their_events() -> None:
    bus = MemoryEventBus()
    hub = hub_of(bus)
    everything, t_all, s1 = connect(hub, bus)
    outcomes, t_out, s2 = connect(hub, bus, types={EventType.RUN_SUCCEEDED})
    one_job, t_job, s3 = connect(hub, bus, job_id="j2")
    await join(hub, everything, s1)
    await join(hub, outcomes, s2, types={EventType.RUN_SUCCEEDED})
    await join(hub, one_job, s3, job_id="j2")
    assert bus.subscribers == 3 and len(hub.groups) == 3
    await bus.publish([ev(job="j1"), ev(EventType.RUN_SUCCEEDED, job="j1"), ev(job="j2")])
    await until(lambda: bool(t_all.writes and t_out.writes and t_job.writes))
    assert t_all.kinds() == ["run.log", "run.succeeded", "run.log"]
    assert t_out.kinds() == ["run.succeeded"] and t_out.ids() == [2]
    assert t_job.ids() == [3]
    hub.close()


async def test_a_client_that_cannot_keep_up_is_told_and_disconnected_within_its_bound() -> None:
    bus = MemoryEventBus()
    hub = hub_of(bus, limit=8192)
    fast, t_fast, s1 = connect(hub, bus)
    slow, t_slow, s2 = connect(hub, bus, stalled=True)  # reads nothing
    await join(hub, fast, s1)
    await join(hub, slow, s2)
    for i in range(100):
        await bus.publish([ev(line="x" * 200, n=i)])
        await until(lambda i=i: t_fast.ids()[-1:] == [i + 1])
    assert slow.ended and slow.overflowed and not fast.ended
    assert t_slow.kinds()[-1] == "overflow"  # told, as when a subscription overflows: reconnect
    assert b"retry: 0" in t_slow.writes[-1]
    assert sum(map(len, t_slow.writes[:-1])) <= 8192  # never more than its bound held for it
    assert 0 < len(t_slow.ids()) < 100
    assert t_fast.ids() == list(range(1, 101))  # the others did not wait for it
    assert next(iter(hub.groups.values())).members.keys() == {fast}
    hub.close()


async def test_a_job_stream_ends_with_the_deletion_and_all_end_when_the_bus_closes() -> None:
    bus = MemoryEventBus()
    hub = hub_of(bus)
    job, t_job, s1 = connect(hub, bus, job_id="j1")
    other, t_other, s2 = connect(hub, bus)
    await join(hub, job, s1, job_id="j1")
    await join(hub, other, s2)
    await bus.publish([ev(EventType.JOB_PAUSED), ev(EventType.JOB_DELETED), ev(EventType.JOB_CREATED,
                                                                                 job="j1")])
    await until(lambda: job.ended and len(t_other.ids()) == 3)
    assert t_job.kinds() == ["job.paused", "job.deleted"] and not job.overflowed
    assert ("j1", None) not in hub.groups  # its group went with its last stream
    await bus.stop()
    await until(lambda: other.ended)
    assert not other.overflowed and bus.subscribers == 0
    hub.close()


async def test_without_a_transport_frames_go_through_the_asgi_send_within_the_same_bound() -> None:
    """Another server than uvicorn (or HTTP/1.0): the frames wait in the client's buffer for the ASGI
    send, still at most ``limit`` bytes; a client whose send does not return is told and ended."""
    sent: list[dict[str, Any]] = []
    gate = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        await gate.wait()  # a client that does not read: the server's send waits
        sent.append(message)

    client = SseClient(send, None, 4096)
    running = asyncio.create_task(client.run())
    assert client.write(b"data: 1\r\n\r\n")
    await asyncio.sleep(0)  # run() took it and waits in send
    assert client.write(b"data: " + b"x" * 3000 + b"\r\n\r\n")
    assert not client.write(b"data: " + b"y" * 2000 + b"\r\n\r\n")  # over the bound
    assert client.ended and client.overflowed and client.unsent <= 4096
    gate.set()
    await asyncio.wait_for(running, 10)
    bodies = [m["body"] for m in sent]
    assert bodies[0] == b"retry: 2000\r\ndata: 1\r\n\r\n"
    assert bodies[1].startswith(b"data: xxx") and b"event: overflow\r\n" in bodies[1]
    assert b"yyy" not in bodies[1]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert all(m["more_body"] for m in sent[:-1])
