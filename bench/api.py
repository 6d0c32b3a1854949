"""The REST API beside its framework's floor: ``chronos serve`` on SQLite and a bare Starlette app serving
the same bytes, both started here, loaded side by side (``make bench-api``; ``python -m bench.api
[--quick] [--repeats 3] [--duration 8]``).

* The Chronos server is ``chronos serve`` itself (a subprocess, its store a SQLite file seeded first: jobs
  of the HTTP type with a secret header to mask, some history per job and 150 runs for a few "hot"
  jobs). The bare server is a Starlette app on the same uvicorn settings (``uvicorn_options``: the same
  h11 protocol, keep-alive, limits) and the same interpreter tuning, answering each case with the exact
  bytes Chronos answered it with - the difference between the two is Chronos's own work per request.
* The load comes from ``wrk -t1 -c16`` when it is installed (``apt-get install wrk``), else from a
  bundled asyncio HTTP/1.1 keep-alive client (in this process; it saturates well below wrk, so a
  fallback figure understates both servers - ratios stay comparable, absolute figures do not).
* Cases: ``GET /jobs?limit=100``, ``GET /jobs/{id}/history?limit=100``, ``POST /jobs`` (target >= 1,000/s),
  ``GET /jobs/health`` (the floor check: routing, middleware, a tiny JSON body). Each case alternates
  bare and Chronos ``--repeats`` times; the summary line gives the median and min-max of each and of
  the per-repeat ratio (chronos rps / bare rps).
* ``--write-rate N``: another process commits to the store N times a second during every load (of both
  servers), as a busy scheduler does: ``GET /jobs`` and history pages are kept only while nothing was
  committed (chronos_app/api/pages.py), so this measures them being built again.
* The scheduler under load (``--scheduler``, in ``make bench``): ``--sched-rate`` python jobs a second on a
  fresh ``chronos serve`` for ``--sched-seconds``, with the API idle, then with ``GET /jobs?limit=100``
  loaded by wrk all along: the share of slots started within 1 s, lag p50/p99 (issue #18 target 6).
* SSE (``--sse``, in ``make bench``): ``--sse-clients`` clients on ``/monitor/logs`` while
  ``--sse-rate`` python jobs a second (an ``async def`` that does nothing) run for ``--sse-seconds``:
  the events every client got against what the runs published (queued, started, succeeded), and the
  delivery delay (receipt minus the event's ``time``) of the first event of each read, p50/p99/max.
  The clients share this machine's two cores with the server: ``--sse-procs`` processes (default 4),
  raw sockets, no parsing beyond counting events and checking that each stream's ids go up (a client
  counts as having every event only with exactly the expected count and no id out of order: a
  duplicated or reordered event fails it); receipt and event time are the same machine's clock.

Every JSON line carries the CPU model and the calibration figure (the bare Starlette rps of the same run
and case); results go to ``bench/api-latest.jsonl`` (``--quick``: ``bench/results/api-quick.jsonl``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"
SECRET = "Bearer bench-secret-token-0123456789"
TARGETS = {"GET /jobs?limit=100": 0.25, "GET /jobs/{id}/history?limit=100": 0.25}
POST_TARGET = 1000.0


async def nothing() -> None:
    """The SSE case's python job: an ``async def`` that does nothing (runs on the worker's loop)."""


# ------------------------------------------------------------------------------------------ machine

def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# ------------------------------------------------------------------------------------------ seeding

def job_spec(i: int, prefix: str = "bench") -> dict[str, Any]:
    """An HTTP job with a secret header (masked in every answer) and a body; half cron, half interval,
    none due during the bench."""
    spec: dict[str, Any] = {
        "name": f"{prefix}-{i:06d}", "type": "http", "description": f"bench job {i}",
        "payload": {"url": f"https://example.com/hooks/{i}", "method": "POST",
                    "headers": {"Authorization": SECRET, "X-Request-Source": "bench"},
                    "json": {"job": i, "kind": "report"}},
        "retry": {"strategy": "exponential", "max_attempts": 3, "delay": 10}, "timeout": 30,
    }
    if i % 2:
        spec["schedule"] = "0 3 1 * *"
    else:
        spec["schedule"] = "@every 1h"
        spec["start_at"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    return spec


async def seed(url: str, jobs: int, runs_per_job: int, hot: int, hot_runs: int) -> list[str]:
    """Create the jobs through the Python API and write their history as the engines write it (queued,
    started, finished: the summaries come with each finish); returns the job ids, hot ones first."""
    from chronos_app import Chronos
    from chronos_core import Run, RunStatus, Trigger
    from chronos_core.ids import new_id

    chronos = Chronos.embedded(database_url=url)
    await chronos.start()
    try:
        made = []
        for first in range(0, jobs, 1000):
            specs = [job_spec(i) for i in range(first, min(jobs, first + 1000))]
            made += await chronos.jobs.create_many(specs)
        store = chronos.store
        now = datetime.now(UTC)
        s = timedelta(seconds=1)
        plan = [(j, hot_runs if k < hot else runs_per_job) for k, j in enumerate(made)]
        batch: list[Run] = []

        async def flush() -> None:
            for run in batch:
                await store.add_run(run, dispatched=True)
            await asyncio.gather(*(store.start_run(r.id, "bench", r.scheduled_for, r.scheduled_for + 30 * s)
                                   for r in batch))
            await asyncio.gather(*(store.finish_run(
                r.id, "bench", status=RunStatus.FAILED if n % 10 == 0 else RunStatus.SUCCEEDED,
                finished_at=r.scheduled_for + s, output="fetched 42 rows\nwrote report.csv")
                for n, r in enumerate(batch)))
            batch.clear()

        for job, count in plan:
            for n in range(count):
                slot = now - (count - n) * 60 * s
                batch.append(Run(id=new_id(), job_id=job.id, scheduled_for=slot, trigger=Trigger.SCHEDULE,
                                 attempt=1, status=RunStatus.QUEUED, created_at=slot, due_at=slot))
                if len(batch) >= 500:
                    await flush()
        if batch:
            await flush()
        return [j.id for j in made]
    finally:
        await chronos.stop(grace=1.0)


# ------------------------------------------------------------------------------------------ servers

def serve_bare(port: int, bodies: Path) -> None:
    """The floor: a Starlette app answering each case's path with the bytes Chronos answered it with, on
    the uvicorn settings ``chronos serve`` uses."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from chronos_app.serving import uvicorn_options
    from chronos_app.settings import Settings
    from chronos_app.tuning import tune_process

    @contextlib.asynccontextmanager
    async def _tuned(app: Starlette) -> AsyncIterator[None]:
        tune_process()  # as chronos serve does once started
        yield

    data = json.loads(bodies.read_text())
    answers = {k: (v["status"], v["body"].encode(), v["location"]) for k, v in data.items()}

    def answer(key: str) -> Response:
        status, body, location = answers[key]
        headers = {"Location": location} if location else None
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    async def jobs(request: Request) -> Response:
        if request.method == "POST":
            await request.body()
            return answer("POST /jobs")
        return answer("GET /jobs?limit=100")

    async def history(request: Request) -> Response:
        return answer("GET /jobs/{id}/history?limit=100")

    async def health(request: Request) -> Response:
        return answer("GET /jobs/health")

    app = Starlette(routes=[Route("/jobs/health", health), Route("/jobs", jobs, methods=["GET", "POST"]),
                            Route("/jobs/{job_id}/history", history)],
                    lifespan=_tuned)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="on", server_header=False,
                **uvicorn_options(Settings()))


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                if _get(port, "/jobs/health")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not answer on {port}: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def chronos_env(db: Path, **extra: str) -> dict[str, str]:
    env = _env()
    for k in [k for k in env if k.startswith("CHRONOS_")]:
        del env[k]
    env.update(CHRONOS_DATABASE_URL=f"sqlite:///{db}", CHRONOS_LOG_LEVEL="warning",
               CHRONOS_PYTHON_MODULES="bench", CHRONOS_SSE_PING="3600", **extra)
    return env


def chronos_cmd(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("chronos")
    return [str(exe), "serve", "--host", HOST, "--port", str(port)]


def _get(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes, str]:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Location") or ""
    finally:
        conn.close()


# A writer beside the load (``--write-rate``): another process committing to the store N times a second,
# as a busy scheduler does, so that the kept pages (chronos_app/api/pages.py) are built again after each
# commit. It changes the description of a job that is on no page the cases read (the last one seeded),
# so the bytes the bare app serves stay Chronos's bytes.
_WRITER = """
import sqlite3, sys, time
db, rate, job_id = sys.argv[1], float(sys.argv[2]), sys.argv[3]
conn = sqlite3.connect(db, isolation_level=None, timeout=60)
n, t0 = 0, time.monotonic()
while True:
    n += 1
    conn.execute("UPDATE jobs SET description = ? WHERE id = ?", (f"bench write {n % 2}", job_id))
    time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
"""


@contextlib.contextmanager
def writes(db: Path, rate: float, job_id: str) -> Iterator[None]:
    """``rate`` commits a second to ``db`` from another process while inside (none for 0)."""
    if rate <= 0:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(rate), job_id])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------------ load

@dataclass
class Load:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    bad: int  # non-2xx answers and socket errors
    tool: str
    cpu_us_per_request: float | None = None  # the server process's CPU over the load / requests


def _wrk_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


POST_LUA = """
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  return wrk.format(nil, "/jobs", nil, string.format(%s, n))
end
"""


def post_body_template(prefix: str) -> str:
    """The body of POST /jobs with ``%d`` for a request counter (names must be unique)."""
    spec = job_spec(0, prefix)
    spec.pop("start_at", None)
    spec["schedule"] = None  # manual only: nothing comes due while the bench runs
    return json.dumps(spec).replace(f"{prefix}-000000", f"{prefix}-%d")


def wrk(port: int, path: str, duration: float, connections: int, post: str | None, tmp: Path) -> Load:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if post is not None:
        lua = tmp / f"post-{uuid.uuid4().hex[:6]}.lua"
        lua.write_text(POST_LUA % json.dumps(post))
        cmd += ["-s", str(lua)]
    out = subprocess.run([*cmd, f"http://{HOST}:{port}{path}"], capture_output=True, text=True,
                         timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    bad = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        bad += sum(int(x) for x in errors.groups())
    return Load(rps=round(rps, 1), p50_ms=_wrk_ms(p50.group(1)) if p50 else None,
                p99_ms=_wrk_ms(p99.group(1)) if p99 else None, requests=requests, bad=bad,
                tool=f"wrk -t1 -c{connections}")


async def _client(port: int, make: Callable[[], bytes], deadline: float, lat: list[float],
                  bad: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            writer.write(make())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            lat.append(time.perf_counter() - t)
            if status >= 300:
                bad[0] += 1
    except (OSError, asyncio.IncompleteReadError):
        bad[0] += 1
    finally:
        writer.close()


def pyload(port: int, path: str, duration: float, connections: int, post: str | None) -> Load:
    """The bundled load generator: ``connections`` keep-alive connections in one asyncio loop."""
    counter = iter(range(1, 1 << 62))
    get = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()

    def make() -> bytes:
        if post is None:
            return get
        body = (post % next(counter)).encode()
        return (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def main() -> tuple[list[float], int, float]:
        lat: list[float] = []
        bad = [0]
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(port, make, t0 + duration, lat, bad) for _ in range(connections)))
        return lat, bad[0], time.perf_counter() - t0

    lat, bad, took = asyncio.run(main())
    lat.sort()
    return Load(rps=round(len(lat) / took, 1), p50_ms=_pct_ms(lat, 0.5), p99_ms=_pct_ms(lat, 0.99),
                requests=len(lat), bad=bad, tool=f"bench.api asyncio client -c{connections}")


def _pct_ms(sorted_s: list[float], q: float) -> float | None:
    if not sorted_s:
        return None
    return round(sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000, 2)


# ------------------------------------------------------------------------------------------ cases

@dataclass
class CaseResult:
    case: str
    chronos: list[Load] = field(default_factory=list)
    bare: list[Load] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [c.rps / b.rps for c, b in zip(self.chronos, self.bare, strict=False) if b.rps]


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summary_line(r: CaseResult) -> str:
    c, b, q = _spread([x.rps for x in r.chronos]), _spread([x.rps for x in r.bare]), _spread(r.ratios())
    text = (f"{r.case}: chronos {c[0]:,.0f}/s ({c[1]:,.0f}-{c[2]:,.0f}) vs bare Starlette {b[0]:,.0f}/s "
            f"({b[1]:,.0f}-{b[2]:,.0f}): ratio {q[0]:.3f} ({q[1]:.3f}-{q[2]:.3f})")
    cc = statistics.median([x.cpu_us_per_request or 0 for x in r.chronos])
    cb = statistics.median([x.cpu_us_per_request or 0 for x in r.bare])
    text += f"; server CPU/request {cc:,.0f} vs {cb:,.0f} µs"
    if r.case in TARGETS:
        text += f"; target >= {TARGETS[r.case]:.2f}: {'met' if q[1] >= TARGETS[r.case] else 'NOT met'}"
    if r.case == "POST /jobs":
        text += f"; target >= {POST_TARGET:,.0f}/s: {'met' if c[1] >= POST_TARGET else 'NOT met'}"
    bad = sum(x.bad for x in r.chronos)
    if bad:
        text += f"; {bad} bad answers from chronos"
    return text


def run_http_cases(args: argparse.Namespace, tmp: Path, meta: dict[str, Any], out: list[dict[str, Any]]) -> \
        list[CaseResult]:
    db = tmp / "api.db"
    t0 = time.perf_counter()
    ids = asyncio.run(seed(f"sqlite:///{db}", args.jobs, args.runs_per_job, args.hot, args.hot_runs))
    print(f"seeded {args.jobs} jobs, {args.runs_per_job} runs each ({args.hot} with {args.hot_runs}) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    prefix = f"post{uuid.uuid4().hex[:6]}"
    post = post_body_template(prefix)
    cases = [("GET /jobs/health", "/jobs/health", None),
             ("GET /jobs?limit=100", "/jobs?limit=100", None),
             ("GET /jobs/{id}/history?limit=100", f"/jobs/{ids[0]}/history?limit=100", None),
             ("POST /jobs", "/jobs", post)]
    loader = wrk if shutil.which("wrk") and not args.no_wrk else None
    cport, bport = free_port(), free_port()
    bodies: dict[str, dict[str, Any]] = {}
    results = []
    with server(chronos_cmd(cport), cport, chronos_env(db), tmp / "chronos.log") as cproc:
        for name, path, body in cases:  # the bytes the bare app will serve
            status, data, location = _get(cport, path, (post % 0).encode() if body else None)
            assert status in (200, 201), (name, status, data[:300])
            bodies[name] = {"status": status, "body": data.decode(), "location": location}
        (tmp / "bodies.json").write_text(json.dumps(bodies))
        cases = [c for c in cases if not args.cases or any(s in c[0] for s in args.cases)]
        bare_cmd = [sys.executable, "-m", "bench.api", "--serve-bare", str(bport), "--bodies",
                    str(tmp / "bodies.json")]
        with server(bare_cmd, bport, _env(), tmp / "bare.log") as bproc:
            for name, path, body in cases:
                r = CaseResult(name)
                for rep in range(args.repeats):
                    for system, port, pid in (("bare", bport, bproc.pid), ("chronos", cport, cproc.pid)):
                        if body is not None:  # names are unique: a prefix of each load's own
                            body = post.replace(prefix, f"{prefix}r{rep}{system}")
                        cpu0 = process_cpu(pid)
                        with writes(db, args.write_rate, ids[-1]):
                            if loader is not None:
                                load = loader(port, path, args.duration, args.connections, body, tmp)
                            else:
                                load = pyload(port, path, args.duration, args.connections, body)
                        if load.requests:
                            used = process_cpu(pid) - cpu0
                            load.cpu_us_per_request = round(used * 1e6 / load.requests, 1)
                        getattr(r, system).append(load)
                        line = {**meta, "bench": "api", "case": name, "system": system, "repeat": rep,
                                "store": "sqlite", "jobs": args.jobs, "bytes": len(bodies[name]["body"]),
                                "rps": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                                "requests": load.requests, "bad": load.bad, "load": load.tool,
                                "cpu_us_per_request": load.cpu_us_per_request,
                                "duration_s": args.duration, "write_rate": args.write_rate,
                                "loadavg_1m": os.getloadavg()[0]}
                        if system == "chronos":
                            line["calibration_bare_rps"] = r.bare[-1].rps
                            line["ratio"] = round(load.rps / r.bare[-1].rps, 4)
                        out.append(line)
                        print(json.dumps(line), flush=True)
                results.append(r)
                c, b, q = (_spread([x.rps for x in r.chronos]), _spread([x.rps for x in r.bare]),
                           _spread(r.ratios()))
                out.append({**meta, "bench": "api", "case": name, "summary": True, "store": "sqlite",
                            "chronos_rps": c, "bare_rps": b, "ratio": [round(x, 4) for x in q],
                            "calibration_bare_rps": b[0], "repeats": args.repeats})
    return results


# -------------------------------------------------------------------------------------------- SSE

@dataclass
class SseClient:
    events: int = 0
    reads: int = 0
    delays: list[float] = field(default_factory=list)
    overflow: bool = False
    error: str | None = None
    types: dict[str, int] | None = None  # by event type (one probe client)
    disorder: int = 0  # ids that did not go up (a duplicated or reordered event)


_TIME = re.compile(rb'"time":"([^"]+)"')
_RUN_EVENT = b"event: run."
_OVERFLOW = b"event: overflow"
_KEEP = len(_OVERFLOW) - 1  # the stream's last bytes, kept for the next read: a marker split across reads
_ID = re.compile(rb"\nid: (\d+)\r\n")  # a frame's id line (the in-memory bus numbers its events)
_ID_KEEP = 32  # at most, from a read's last newline: the start of an id line split across reads
_READ_SIZE = 256 * 1024


class _SseReader(asyncio.BufferedProtocol):
    """One client's socket: counts the events it gets and samples the delay of the first event of each
    read (the oldest in it). A buffered protocol reading into one buffer shared by the process's clients
    (each read is counted before the next starts), not a stream reader and a task: the load generator
    must cost far less than the server, and its own lag counts in the delay it measures."""

    buffer = bytearray(_READ_SIZE)

    def __init__(self, c: SseClient, settled: Callable[[], None]) -> None:
        self.c = c
        self.settled = settled
        self.head: bytes | None = b""
        self.tail = b""
        self.id_tail = b""  # the last read's bytes from its last newline (an id line may continue here)
        self.last_id = -1
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        buf = self.buffer
        c = self.c
        start = 0
        if self.head is not None:
            self.head += bytes(buf[:nbytes])
            if b"\r\n\r\n" not in self.head:
                return
            head, _, rest = self.head.partition(b"\r\n\r\n")
            self.head = None
            if b" 200 " not in head[:16]:
                c.error = head[:40].decode(errors="replace")
                self.transport.close()  # type: ignore[attr-defined]
                return
            self.settled()
            start = nbytes - len(rest)
            if not rest:
                return
        now = time.time()
        # markers inside this read, plus one split across the previous read and this one (the joined
        # piece is shorter than two markers, so whatever it holds spans the boundary); the shared buffer
        # holds other reads' bytes after ``nbytes``
        edge = self.tail[-(len(_RUN_EVENT) - 1):] + bytes(buf[start:min(nbytes, start + len(_RUN_EVENT) - 1)])
        c.events += buf.count(_RUN_EVENT, start, nbytes) + edge.count(_RUN_EVENT)
        if _OVERFLOW in self.tail + bytes(buf[start:min(nbytes, start + len(_OVERFLOW) - 1)]) or buf.find(
                _OVERFLOW, max(start, nbytes - 4096), nbytes) >= 0:  # the last frame of its stream
            c.overflow = True
        self.tail = (self.tail + bytes(buf[max(start, nbytes - _KEEP):nbytes]))[-_KEEP:]
        if c.types is not None:
            for t in re.findall(rb"event: (\S+)", bytes(buf[start:nbytes])):
                c.types[t.decode()] = c.types.get(t.decode(), 0) + 1
        self._check_ids(buf, start, nbytes)
        c.reads += 1
        m = _TIME.search(buf, start, nbytes)
        if m:
            with contextlib.suppress(ValueError):
                c.delays.append(now - datetime.fromisoformat(m.group(1).decode()).timestamp())

    def _check_ids(self, buf: bytearray, start: int, nbytes: int) -> None:
        """Count in ``disorder`` the ids of this read that do not go up from the stream's last one. An id
        line split across reads starts at the last read's last newline: it is matched there, joined with
        this read's first bytes; the lines wholly in this read are matched in the shared buffer."""
        ids: list[int] = []
        if self.id_tail:
            m = _ID.match(self.id_tail + bytes(buf[start:min(nbytes, start + _ID_KEEP)]))
            if m:
                ids.append(int(m.group(1)))
        ids += map(int, _ID.findall(buf, start, nbytes))
        if ids:
            prev = [self.last_id, *ids[:-1]]
            self.c.disorder += sum(1 for a, b in zip(prev, ids, strict=True) if b <= a)
            self.last_id = ids[-1]
        nl = buf.rfind(b"\n", start, nbytes)
        if nl >= 0:
            self.id_tail = bytes(buf[nl:nbytes]) if nbytes - nl <= _ID_KEEP else b""
        elif self.id_tail:  # no newline in this read: the line so far goes on
            joined = self.id_tail + bytes(buf[start:nbytes])
            self.id_tail = joined if len(joined) <= _ID_KEEP else b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head is not None and self.c.error is None:
            self.c.error = type(exc).__name__ if exc else "closed before the head"
        if not self.done.done():
            self.done.set_result(None)


async def _sse_client(port: int, c: SseClient, settled: Callable[[], None], stop: asyncio.Event) -> None:
    """One client on ``/monitor/logs`` until ``stop``."""
    transport = None
    try:
        loop = asyncio.get_running_loop()
        transport, reader = await loop.create_connection(lambda: _SseReader(c, settled), HOST, port)
        assert isinstance(reader, _SseReader)
        transport.write(f"GET /monitor/logs HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream"
                        "\r\n\r\n".encode())
        stopping = asyncio.ensure_future(stop.wait())
        waits: set[asyncio.Future[Any]] = {reader.done, stopping}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    except OSError as exc:
        c.error = type(exc).__name__
    finally:
        if c.error is not None:
            settled()
        if transport is not None:
            transport.close()


async def _sse_load(port: int, n: int, probe: bool) -> None:
    """One load process (``--sse-load``): ``n`` clients; prints ``ready`` once every one streams or
    failed, and, when its stdin closes, one JSON line of what each client got."""
    clients = [SseClient() for _ in range(n)]
    if probe:
        clients[0].types = {}
    ready, stop = asyncio.Event(), asyncio.Event()
    pending = [len(clients)]

    def settled() -> None:  # a client is streaming, or has failed
        pending[0] -= 1
        if pending[0] <= 0:
            ready.set()

    tasks = []
    for i, c in enumerate(clients):  # connect in waves: the listen backlog is finite
        tasks.append(asyncio.create_task(_sse_client(port, c, settled, stop)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ready.wait(), 60)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps([{"events": c.events, "overflow": c.overflow, "error": c.error, "types": c.types,
                       "disorder": c.disorder,
                       "delays": [round(d, 5) for d in c.delays]} for c in clients]), flush=True)


async def _sse_main(args: argparse.Namespace, port: int, tmp: Path, pid: int) -> dict[str, Any]:
    # The clients are spread over --sse-procs processes (one alone took 58-94 % of a core: its lag in
    # reading 1,000 sockets counted as the server's delivery delay); every process stamps the receipt
    # with this machine's clock, as the server stamps the event.
    procs_n = max(1, min(args.sse_procs, args.sse_clients))
    shares = [args.sse_clients // procs_n + (i < args.sse_clients % procs_n) for i in range(procs_n)]
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.api", "--sse-load", str(port), "--sse-clients", str(k),
        *(["--sse-probe"] if i == 0 else []), cwd=HERE.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        limit=1 << 30) for i, k in enumerate(shares)]
    for p in procs:
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 120)
        assert line.strip() == b"ready", line[:300]
    # the jobs: N python jobs @every 1s, phases spread over the second, from 2 s from now for D seconds
    base = datetime.fromtimestamp(int(time.time()) + 3, UTC)
    end = base + timedelta(seconds=args.sse_seconds)
    specs = [{"name": f"sse-{i:05d}", "type": "python", "payload": {"function": "bench.api:nothing"},
              "schedule": "@every 1s", "start_at": (base + timedelta(seconds=i / args.sse_rate)).isoformat(),
              "end_at": end.isoformat(), "misfire_grace": 1.0} for i in range(args.sse_rate)]
    loop = asyncio.get_running_loop()
    status, body, _ = await loop.run_in_executor(
        None, lambda: _post_json(port, "/jobs/apply", {"jobs": specs}))
    assert status == 200, body[:300]
    await asyncio.sleep(max(0.0, base.timestamp() - time.time()))

    def clients_cpu() -> float:
        return sum(process_cpu(p.pid) for p in procs)

    cpu0, own0, load0 = process_cpu(pid), clients_cpu(), os.getloadavg()[0]
    await asyncio.sleep(max(0.0, end.timestamp() - time.time()))
    cpu_s, own_s, load1 = process_cpu(pid) - cpu0, clients_cpu() - own0, os.getloadavg()[0]
    await asyncio.sleep(args.sse_settle)
    got: list[dict[str, Any]] = []
    for p in procs:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.close()
    for p in procs:
        assert p.stdout is not None
        got += json.loads(await p.stdout.readline())
        await p.wait()
    clients = [SseClient(events=g["events"], delays=g["delays"], overflow=g["overflow"], error=g["error"],
                         types=g["types"], disorder=g["disorder"]) for g in got]
    ok = sum(1 for c in clients if c.error is None)
    # what was published: every run of the window (and its events), read back from history
    runs = await loop.run_in_executor(None, lambda: _all_runs(port))
    by_status: dict[str, int] = {}
    for r in runs:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    # queued + started + succeeded per succeeded run; a missed or skipped slot publishes one event
    expected = sum(3 if s == "succeeded" else (1 if s in ("missed", "skipped") else 3)
                   for s in (r["status"] for r in runs))
    # the engines meanwhile: the share of the window's slots started within 1 s (as the scheduler case)
    window = [r for r in runs if base <= datetime.fromisoformat(r["scheduled_for"]) < end]
    lags = sorted((datetime.fromisoformat(r["started_at"]) - datetime.fromisoformat(r["scheduled_for"]))
                  .total_seconds() for r in window if r["started_at"])
    slots = args.sse_rate * args.sse_seconds
    counts = sorted(c.events for c in clients if c.error is None)
    delays = sorted(d for c in clients for d in c.delays)
    # exactly the expected events, ids going up: a duplicated or reordered event is not "every event"
    full = sum(1 for c in clients if c.error is None and c.events == expected and not c.disorder)
    extra = sum(1 for n in counts if n > expected)
    disordered = sum(1 for c in clients if c.disorder)
    return {
        "clients": args.sse_clients, "connected": ok, "rate": args.sse_rate, "seconds": args.sse_seconds,
        "client_procs": procs_n,
        "runs": len(runs), "runs_by_status": by_status, "events_expected": expected,
        "probe_client_types": clients[0].types,
        "events_per_client_min": counts[0] if counts else 0, "events_per_client_median":
            statistics.median(counts) if counts else 0, "events_per_client_max": counts[-1] if counts else 0,
        "clients_with_every_event": full, "clients_with_extra_events": extra,
        "clients_with_ids_out_of_order": disordered, "overflowed": sum(1 for c in clients if c.overflow),
        "errors": sum(1 for c in clients if c.error is not None),
        "delay_p50_ms": _pct_ms(delays, 0.5), "delay_p99_ms": _pct_ms(delays, 0.99),
        "delay_max_ms": round(delays[-1] * 1000, 1) if delays else None, "delay_samples": len(delays),
        "slots": slots, "on_time_pct": round(100 * sum(1 for x in lags if x <= 1.0) / slots, 2),
        "lag_p50_ms": _pct_ms(lags, 0.5), "lag_p99_ms": _pct_ms(lags, 0.99),
        "server_cpu_pct": round(100 * cpu_s / args.sse_seconds, 1),
        "clients_cpu_pct": round(100 * own_s / args.sse_seconds, 1),
        "loadavg_1m": [round(load0, 2), round(load1, 2)],
    }


def _post_json(port: int, path: str, data: Any) -> tuple[int, bytes, str]:
    return _get(port, path, json.dumps(data).encode())


def _all_runs(port: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    before = ""
    while True:
        _, body, _ = _get(port, f"/runs?limit=500{before}")
        page = json.loads(body)
        runs += page["items"]
        if not page["next_cursor"]:
            return runs
        before = f"&before={page['next_cursor']}"


def run_sse(args: argparse.Namespace, tmp: Path, meta: dict[str, Any]) -> dict[str, Any]:
    db = tmp / "sse.db"
    port = free_port()
    with server(chronos_cmd(port), port, chronos_env(db, CHRONOS_MAX_CONNECTIONS=str(args.sse_clients + 100)),
                tmp / "chronos-sse.log") as proc:
        result = asyncio.run(_sse_main(args, port, tmp, proc.pid))
    line = {**meta, "bench": "api", "case": "SSE /monitor/logs", "store": "sqlite", **result}
    # the created events were counted out; the runs' events must each reach every client
    return line


# ------------------------------------------------------------------------- the scheduler under load

def run_scheduler_case(args: argparse.Namespace, tmp: Path, meta: dict[str, Any], loaded: bool,
                       tag: str) -> dict[str, Any]:
    """``--sched-rate`` python jobs a second (``@every 1s``, an ``async def`` doing nothing) on a fresh
    ``chronos serve`` for ``--sched-seconds``, with ``GET /jobs?limit=100`` loaded by wrk all along (or
    not): the share of slots started within 1 s, the start lag p50/p99, slots recorded missed, the
    server's CPU over the window (``--serve-env``: settings of that server, e.g.
    ``CHRONOS_API_THREAD=false``)."""
    db = tmp / f"sched-{tag}.db"
    port = free_port()
    extra = dict(kv.split("=", 1) for kv in args.serve_env)
    with server(chronos_cmd(port), port, chronos_env(db, **extra), tmp / f"chronos-sched-{tag}.log") as proc:
        idle = [job_spec(i, "idle") for i in range(200)]  # a full first page for the listing
        status, body, _ = _post_json(port, "/jobs/apply", {"jobs": idle})
        assert status == 200, body[:300]
        base = datetime.fromtimestamp(int(time.time()) + 5, UTC)
        end = base + timedelta(seconds=args.sched_seconds)
        step = timedelta(seconds=1 / args.sched_rate)
        specs = [{"name": f"tick-{i:05d}", "type": "python", "payload": {"function": "bench.api:nothing"},
                  "schedule": "@every 1s", "start_at": (base + i * step).isoformat(),
                  "end_at": end.isoformat(), "misfire_grace": 5.0} for i in range(args.sched_rate)]
        status, body, _ = _post_json(port, "/jobs/apply", {"jobs": specs})
        assert status == 200, body[:300]
        load = None
        time.sleep(max(0.0, base.timestamp() - time.time()))
        cpu0, load0 = process_cpu(proc.pid), os.getloadavg()[0]
        if loaded:
            if shutil.which("wrk") and not args.no_wrk:
                load = wrk(port, "/jobs?limit=100", args.sched_seconds, args.connections, None, tmp)
            else:
                load = pyload(port, "/jobs?limit=100", args.sched_seconds, args.connections, None)
        time.sleep(max(0.0, end.timestamp() - time.time()))
        cpu_s, load1 = process_cpu(proc.pid) - cpu0, os.getloadavg()[0]
        time.sleep(3.0)
        runs = [r for r in _all_runs(port) if base.timestamp() <= datetime.fromisoformat(
            r["scheduled_for"]).timestamp() < end.timestamp()]
    lags = sorted((datetime.fromisoformat(r["started_at"]) - datetime.fromisoformat(r["scheduled_for"]))
                  .total_seconds() for r in runs if r["started_at"])
    slots = args.sched_rate * args.sched_seconds
    on_time = sum(1 for x in lags if x <= 1.0)
    case = "scheduler while the API is loaded" if loaded else "scheduler, API idle"
    return {**meta, "tree": str(ROOT), "bench": "api", "case": case, "store": "sqlite",
            "rate": args.sched_rate, "seconds": args.sched_seconds, "slots": slots, "started": len(lags),
            "on_time_pct": round(100 * on_time / slots, 2),
            "missed": sum(1 for r in runs if r["status"] == "missed"),
            "lag_p50_ms": _pct_ms(lags, 0.5), "lag_p99_ms": _pct_ms(lags, 0.99),
            "api_rps": load.rps if load else None, "api_p99_ms": load.p99_ms if load else None,
            "api_requests": load.requests if load else None,
            "server_cpu_pct": round(100 * cpu_s / args.sched_seconds, 1), "serve_env": extra,
            "loadavg_1m": [round(load0, 2), round(load1, 2)]}


# ------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s per load, 1 repeat, 200 jobs, no SSE")
    p.add_argument("--repeats", type=int, help="alternating bare/chronos loads per case (default 3)")
    p.add_argument("--duration", type=float, help="seconds per load (default 8)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--jobs", type=int, help="jobs stored (default 1000)")
    p.add_argument("--runs-per-job", type=int, default=5)
    p.add_argument("--hot", type=int, default=5, help="jobs with --hot-runs runs (the history case)")
    p.add_argument("--hot-runs", type=int, default=150)
    p.add_argument("--cases", nargs="*", help="only the cases whose name contains one of these")
    p.add_argument("--write-rate", type=float, default=0.0, metavar="N",
                   help="commits a second to the store by another process during every load (a busy "
                        "scheduler: the API's kept pages are built again after each commit; default 0)")
    p.add_argument("--no-wrk", action="store_true", help="use the bundled load generator")
    p.add_argument("--sse", action=argparse.BooleanOptionalAction, default=None,
                   help="run the SSE case (default: on, off with --quick)")
    p.add_argument("--sse-clients", type=int, default=1000)
    p.add_argument("--sse-rate", type=int, default=500, help="python jobs a second during the SSE case")
    p.add_argument("--sse-seconds", type=int, default=10)
    p.add_argument("--sse-settle", type=float, default=5.0)
    p.add_argument("--sse-procs", type=int, default=4, help="processes the SSE clients are spread over")
    p.add_argument("--sse-load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--sse-probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scheduler", action=argparse.BooleanOptionalAction, default=None,
                   help="the scheduler's on-time rate with the API idle and loaded (default: on, off "
                        "with --quick)")
    p.add_argument("--sched-rate", type=int, default=200, help="python jobs a second in that case")
    p.add_argument("--sched-seconds", type=int, default=10)
    p.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of the scheduler case's server (again for more)")
    p.add_argument("--only-scheduler", action="store_true", help="the scheduler case alone")
    p.add_argument("--tree", type=Path, help="the source tree whose chronos serves (default: this one; "
                   "an A/B against another checkout)")
    p.add_argument("--out", type=Path)
    p.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bodies", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tree:
        global ROOT
        ROOT = args.tree.resolve()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.bodies)
        return 0
    if args.sse_load:
        asyncio.run(_sse_load(args.sse_load, args.sse_clients, args.sse_probe))
        return 0
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 8.0)
    args.jobs = args.jobs or (200 if args.quick else 1000)
    sse = args.sse if args.sse is not None else not args.quick
    out_path = args.out or (RESULTS / "api-quick.jsonl" if args.quick else HERE / "api-latest.jsonl")
    from importlib import metadata

    meta = {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "machine_shared": True,
            "python": platform.python_version(), "chronos": metadata.version("chronos-scheduler"),
            "starlette": metadata.version("starlette"), "uvicorn": metadata.version("uvicorn"),
            "time": datetime.now(UTC).isoformat(timespec="seconds")}
    lines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="chronos-bench-api-") as t:
        tmp = Path(t)
        only = args.only_scheduler
        results = run_http_cases(args, tmp, meta, lines) if args.cases != ["SSE"] and not only else []
        sse_line = run_sse(args, tmp, meta) if sse and not only else None
        sched = only or (args.scheduler if args.scheduler is not None else not args.quick)
        sched_lines = [run_scheduler_case(args, tmp, meta, loaded, tag)
                       for loaded, tag in ((False, "idle"), (True, "loaded"))] if sched else []
    lines += sched_lines
    for x in sched_lines:
        print(json.dumps(x), flush=True)
    if sse_line:
        lines.append(sse_line)
        print(json.dumps(sse_line), flush=True)
    print(f"\nAPI on SQLite, {args.jobs} jobs; {args.repeats} x {args.duration:g} s per load, median "
          f"(min-max); machine: {meta['cpu_model']} x{meta['cpus']}, shared with other work"
          + (f"; {args.write_rate:g} commits/s by another process during each load"
             if args.write_rate else ""))
    for r in results:
        print("- " + summary_line(r))
    if sse_line:
        s = sse_line
        met = s["clients_with_every_event"] == s["clients"] and (s["delay_p99_ms"] or 1e9) <= 100
        error = "" if not (s["clients_with_extra_events"] or s["clients_with_ids_out_of_order"]) else (
            f" (ERROR: {s['clients_with_extra_events']} clients got more events than published, "
            f"{s['clients_with_ids_out_of_order']} got ids out of order)")
        print(f"- SSE: {s['connected']}/{s['clients']} clients on /monitor/logs, {s['runs']} runs in "
              f"{s['seconds']} s ({s['rate']}/s nominal): events per client {s['events_per_client_min']}-"
              f"{s['events_per_client_max']} of {s['events_expected']} expected, "
              f"{s['clients_with_every_event']} clients got every event, {s['overflowed']} overflowed"
              f"{error}; "
              f"delivery p50 {s['delay_p50_ms']} ms, p99 {s['delay_p99_ms']} ms (target: every event, "
              f"p99 <= 100 ms: {'met' if met else 'NOT met'}); engines meanwhile {s['on_time_pct']} % of "
              f"{s['slots']} slots started within 1 s (lag p99 {s['lag_p99_ms']} ms), server CPU "
              f"{s['server_cpu_pct']} %, load average {s['loadavg_1m']}")
    for x in sched_lines:
        api = f"; API {x['api_rps']}/s, p99 {x['api_p99_ms']} ms" if x["api_rps"] is not None else ""
        print(f"- {x['case']}: {x['rate']} jobs/s for {x['seconds']} s, {x['on_time_pct']} % of slots "
              f"started within 1 s, lag p50 {x['lag_p50_ms']} ms, p99 {x['lag_p99_ms']} ms, "
              f"{x['missed']} missed{api}; server CPU {x['server_cpu_pct']} %, load {x['loadavg_1m']}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    print(f"\nresults: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
