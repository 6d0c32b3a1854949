"""The socket ``chronos serve`` listens on: connections accepted from it have Nagle's algorithm off."""

from __future__ import annotations

import asyncio
import socket

from chronos_app.cli import listen_socket


async def test_connections_accepted_by_serve_have_tcp_nodelay() -> None:
    # uvicorn writes a response's head and body separately; with Nagle on, the body waited for the
    # client's delayed ACK (~40 ms a request, every request of the API)
    sock = listen_socket("127.0.0.1", 0)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.get_extra_info("socket")
        seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(seen, 10) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
