"""bench.api's SSE load client counts every run event once, however the stream is split into reads.

It reads into one buffer shared by a process's clients and carries only the last bytes of a read over to
the next, so a marker split across reads must be counted exactly once (the delivery figure and "every
client got every event" rest on these counts)."""

import asyncio
import random

from bench.api import SseClient, _SseReader

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _frames(n: int) -> bytes:
    kinds = ["run.queued", "run.started", "job.created", "run.succeeded"]
    out = bytearray()
    for i in range(n):
        kind = kinds[i % len(kinds)]
        out += (f'id: {i}\r\nevent: {kind}\r\ndata: {{"time":"2026-12-04T19:00:00.000000Z","n":{i}}}'
                "\r\n\r\n").encode()
    return bytes(out)


def _feed(stream: bytes, cuts: list[int]) -> SseClient:
    async def main() -> SseClient:
        c = SseClient()
        reader = _SseReader(c, lambda: None)
        pos = 0
        for end in [*cuts, len(stream)]:
            piece = stream[pos:end]
            pos = end
            if not piece:
                continue
            buf = reader.get_buffer(len(piece))
            buf[:len(piece)] = piece
            reader.buffer_updated(len(piece))
        return c
    return asyncio.run(main())


def _run_events(n: int) -> int:
    return sum(1 for i in range(n) if i % 4 != 2)


def test_every_split_counts_each_run_event_once():
    body = _frames(12)
    stream = HEAD + body
    for cut in range(1, len(stream)):  # every two-read split
        c = _feed(stream, [cut])
        assert c.events == _run_events(12), cut
        assert c.delays  # a read holding a whole "time" is sampled (the stream's first, or its last)
    rng = random.Random(18)
    for _ in range(200):  # reads of one byte up to a few frames
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(2, 60)))
        c = _feed(stream, cuts)
        assert c.events == _run_events(12)
        assert not c.overflow


def test_the_overflow_frame_is_seen_however_it_is_split():
    tail = b"event: overflow\r\nretry: 0\r\ndata: {\"detail\": \"fell behind\"}\r\n\r\n"
    stream = HEAD + _frames(5) + tail + b"0\r\n\r\n"
    for cut in range(len(HEAD) + 1, len(stream)):
        c = _feed(stream, [cut])
        assert c.overflow, cut
        assert c.events == _run_events(5)


def test_a_refused_stream_is_an_error_not_events():
    async def main() -> SseClient:
        c = SseClient()
        reader = _SseReader(c, lambda: None)

        class Transport:
            def close(self) -> None:
                pass

        reader.transport = Transport()  # type: ignore[attr-defined]
        data = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
        reader.get_buffer(len(data))[:len(data)] = data
        reader.buffer_updated(len(data))
        return c
    c = asyncio.run(main())
    assert c.error is not None and "503" in c.error
    assert c.events == 0


def test_ids_in_order_are_clean_however_split_and_a_duplicate_or_a_swap_is_caught():
    frames = [f'id: {i}\r\nevent: run.queued\r\ndata: {{"n":{i}}}\r\n\r\n'.encode() for i in range(8, 14)]
    good = HEAD + b"".join(frames)
    dup = HEAD + b"".join([*frames[:3], frames[2], *frames[3:]])  # a partial send's rest sent twice
    swap = HEAD + b"".join([*frames[:2], frames[3], frames[2], *frames[4:]])
    rng = random.Random(18)
    for stream, bad in ((good, False), (dup, True), (swap, True)):
        splits = [[cut] for cut in range(1, len(stream))]
        splits += [sorted(rng.sample(range(1, len(stream)), rng.randint(2, 60))) for _ in range(200)]
        for cuts in splits:
            c = _feed(stream, cuts)
            assert bool(c.disorder) is bad, (stream is dup, cuts)
