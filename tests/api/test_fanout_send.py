"""The fan-out's own ``send`` (chronos_app.api.fanout: libc's, called without releasing the GIL) on real
loopback sockets under asyncio's transport: the bytes arrive whole and in order, also when the socket
takes only part of a write and the transport buffers the rest (a direct send must never pass bytes the
transport still holds), the hub's bound still counts what the transport holds, and a transport that is
not asyncio's plain socket one (TLS, another loop's) is never written around."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest

from chronos_app.api import fanout
from chronos_app.api.fanout import SseClient

held_only = pytest.mark.skipif(fanout._SEND is None, reason="no held send on this platform (Linux only)")


async def _never(message: Any) -> None:
    raise AssertionError("a client with a transport does not use the ASGI send")


class _Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport


async def _pair(sndbuf: int | None = None) -> tuple[asyncio.WriteTransport, socket.socket]:
    """A server-side transport (as uvicorn's) and the client's blocking socket (read by hand)."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[asyncio.WriteTransport] = loop.create_future()

    def factory() -> _Sink:
        sink = _Sink()
        orig = sink.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            orig(transport)
            if sndbuf is not None:
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            made.set_result(sink.transport)
        sink.connection_made = connection_made  # type: ignore[method-assign]
        return sink

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peer = socket.socket()
    if sndbuf is not None:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    await loop.run_in_executor(None, peer.connect, ("127.0.0.1", port))
    transport = await asyncio.wait_for(made, 10)
    server.close()
    return transport, peer


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        assert rest[n:n + 2] == b"\r\n"
        out += rest[:n]
        data = rest[n + 2:]
    return out


async def _read_all(peer: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()

    def read() -> bytes:
        got = b""
        peer.settimeout(10)
        while len(got) < n:
            part = peer.recv(1 << 16)
            assert part, "closed early"
            got += part
        return got
    return await loop.run_in_executor(None, read)


@held_only
async def test_frames_go_out_whole_and_in_order_through_the_held_send(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = fanout._SEND
    assert real is not None
    taken: list[int] = []

    def counted(fd: int, data: bytes, size: int, flags: int) -> int:  # the real send, counted
        n = real(fd, data, size, flags)
        taken.append(n)
        return n
    monkeypatch.setattr(fanout, "_SEND", counted)
    transport, peer = await _pair()
    try:
        client = SseClient(_never, transport, 1 << 20)
        assert client._fd == transport.get_extra_info("socket").fileno()
        frames = [b"id: %d\r\nevent: run.log\r\ndata: {}\r\n\r\n" % i for i in range(200)]
        for f in frames:
            assert client.write(f)
            assert transport.get_write_buffer_size() == 0  # the socket took it: nothing left behind
        # every write went out through the held send, whole (asyncio's own write would send it too)
        assert taken == [len(fanout._chunk(x)) for x in [fanout.RETRY_LINE + frames[0], *frames[1:]]]
        expected = fanout.RETRY_LINE + b"".join(frames)
        got = await _read_all(peer, len(b"".join(fanout._chunk(x) for x in
                                                [fanout.RETRY_LINE + frames[0], *frames[1:]])))
        assert _dechunk(got) == expected
    finally:
        transport.close()
        peer.close()


@held_only
async def test_a_partial_send_leaves_the_rest_to_the_transport_and_nothing_passes_it() -> None:
    transport, peer = await _pair(sndbuf=4096)  # small kernel buffers, and the peer does not read yet
    try:
        client = SseClient(_never, transport, 64 << 20)
        sent = []
        for i in range(400):  # ~4 MB: far more than the socket takes while the peer does not read
            frame = b"id: %d\r\nevent: run.log\r\ndata: %s\r\n\r\n" % (i, b"x" * 10_000)
            assert client.write(frame)
            sent.append(frame)
        assert transport.get_write_buffer_size() > 0  # the transport holds the rest
        body = fanout.RETRY_LINE + b"".join(sent)
        total = sum(len(fanout._chunk(x)) for x in [fanout.RETRY_LINE + sent[0], *sent[1:]])
        got = await _read_all(peer, total)  # the loop's writer drains the transport meanwhile
        assert _dechunk(got) == body  # every byte, in order: no direct send jumped the buffered bytes
    finally:
        transport.close()
        peer.close()


async def test_a_client_that_does_not_read_is_still_cut_off_at_the_bound(fanout_send: str) -> None:
    transport, peer = await _pair(sndbuf=4096)
    try:
        client = SseClient(_never, transport, 256 * 1024)
        assert (client._fd >= 0) is (fanout_send == "held send")  # the way this run takes
        frame = b"id: 1\r\nevent: run.log\r\ndata: %s\r\n\r\n" % (b"y" * 10_000)
        for _ in range(1000):
            if not client.write(frame):
                break
        assert client.overflowed and client.ended
        assert transport.get_write_buffer_size() <= 256 * 1024 + 1024  # the bound, plus the overflow frame
    finally:
        transport.close()
        peer.close()


def test_only_asyncio_s_plain_socket_transport_is_written_around() -> None:
    """A transport class from another module than asyncio's selector transports (as TLS's
    asyncio.sslproto, or another loop's) gets no descriptor: this guards the module check."""
    sock = socket.socket()

    class OtherTransport(asyncio.WriteTransport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return sock if name == "socket" else default

    try:
        other = OtherTransport()
        assert fanout._socket_fd(other) == -1
        assert SseClient(_never, other, 1024)._fd == -1
    finally:
        sock.close()


@held_only
async def test_a_closed_descriptor_reused_by_another_socket_gets_nothing() -> None:
    """Once the transport is closing, its descriptor may be closed and taken by another connection: a
    write must then go nowhere (bytes on another client's connection would leak its events)."""
    transport, peer = await _pair()
    a = b = None
    try:
        client = SseClient(_never, transport, 1 << 20)
        fd = client._fd
        assert fd >= 0
        transport.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # asyncio closes the socket: the descriptor number is free
        a, b = socket.socketpair()  # one of them takes the same number
        other = b if a.fileno() == fd else a
        assert fd in (a.fileno(), b.fileno())
        client.write(b"event: run.log\r\ndata: SECRET\r\n\r\n")
        assert client.gone
        other.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            assert b"SECRET" not in other.recv(100)
    finally:
        transport.close()
        peer.close()
        for s in (a, b):
            if s is not None:
                s.close()
