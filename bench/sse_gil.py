"""The SSE fan-out's write with and without the GIL hand-backs (``python -m bench.sse_gil``).

One write of ``--size`` bytes to each of ``--sockets`` loopback sockets (a reader process drains them),
``--writes`` times 20 ms apart, through ``socket.send`` (releases the GIL around each call) and through
libc's ``send`` called with the GIL kept (``chronos_app.api.fanout._SEND``, the product's own, imported),
each alone and beside a thread running Python (as the engines' thread beside the API's); switch interval
0.5 ms, as ``chronos serve`` tunes it. Prints the p50 and max of one write to all the sockets."""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import threading
import time

from chronos_app.api.fanout import _SEND, _SEND_FLAGS


def _reader(port: int, n: int) -> None:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    buf = bytearray(1 << 18)
    while True:
        for key, _ in sel.select():
            try:
                if key.fileobj.recv_into(buf) == 0:  # type: ignore[union-attr]
                    return
            except BlockingIOError:
                pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sse_gil", description=__doc__)
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--size", type=int, default=20_000)
    p.add_argument("--writes", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--reader", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reader:
        _reader(args.reader, args.sockets)
        return 0
    sys.setswitchinterval(0.0005)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    port = ls.getsockname()[1]
    reader = subprocess.Popen([sys.executable, "-m", "bench.sse_gil", "--reader", str(port),
                               "--sockets", str(args.sockets)])
    conns: list[socket.socket] = []
    while len(conns) < args.sockets:
        c, _ = ls.accept()
        c.setblocking(False)
        conns.append(c)
    fds = [c.fileno() for c in conns]
    send = _SEND  # the product's own (loading, argument types), so this measures what it runs
    if send is None:
        raise SystemExit("no held send on this platform (chronos_app.api.fanout._SEND is None)")
    data = b"x" * args.size
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    def write(held: bool) -> tuple[float, int]:
        t, short = time.perf_counter(), 0
        if held:
            for fd in fds:
                short += send(fd, data, len(data), _SEND_FLAGS) < len(data)  # DONTWAIT | NOSIGNAL
        else:
            for c in conns:
                try:
                    short += c.send(data) < len(data)
                except BlockingIOError:
                    short += 1
        return time.perf_counter() - t, short

    for _ in range(args.repeats):
        for held in (False, True):
            for beside in (False, True):
                stop.clear()
                th = threading.Thread(target=spin) if beside else None
                if th:
                    th.start()
                times, shorts = [], 0
                for _ in range(args.writes):
                    dt, s = write(held)
                    times.append(dt)
                    shorts += s
                    time.sleep(0.02)
                stop.set()
                if th:
                    th.join()
                times.sort()
                how = "held send" if held else "socket.send"
                where = "beside a Python thread" if beside else "alone"
                print(f"{how:11s} {where:22s} {args.sockets} x {args.size} B: p50 "
                      f"{times[len(times) // 2] * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms, short sends "
                      f"{shorts}, load {os.getloadavg()[0]:.2f}", flush=True)
    for c in conns:
        c.close()
    reader.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
