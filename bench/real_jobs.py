"""Real job types on ``chronos serve`` with SQLite: N HTTP jobs a second against a local server, or N
shell jobs (``true``) a second: ``python -m bench.real_jobs [--quick]`` (``make bench-real-jobs``).

The bench starts a local HTTP server (a process of its own: a minimal asyncio HTTP/1.1 server answering
``200 ok``) and ``chronos serve`` on a fresh SQLite file (``CHRONOS_ALLOW_SHELL=true``,
``CHRONOS_HTTP_ALLOW_HOSTS=127.0.0.1``, worker concurrency ``--concurrency``), creates the jobs through
``POST /jobs/apply`` (``@every 1s`` with phases spread over the second, ``misfire_grace: 1``), warms up,
measures a window, stops the service and reads the history from the SQLite file. As in ``bench.run``, a
slot is on time when its run started within 1 s.

CPU is the service process's (user + system, from ``/proc``, ``psutil``) over the window per run started
in it, the children's (the shell jobs' processes, reaped by the service) beside it, and the HTTP server's.
The split by component comes from ``py-spy record`` of the service during the window (on-CPU samples of
every thread): each sample goes to the innermost frame that names a component - **executor**
(``chronos_adapters/executors``, httpx/httpcore/h11, asyncio's subprocess code), **store**
(``chronos_adapters/sql``, SQLAlchemy), **API** (``chronos_app/api``, Starlette, uvicorn), **engine**
(``chronos_core``: scheduler, worker, planning, events) - or to **loop** (the event loop itself and what
no component names). Every JSON line carries the machine (``bench.common.machine``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import ON_TIME, machine, percentile

HERE = Path(__file__).resolve().parent
KINDS = {"http": 1000, "shell": 200}  # jobs a second (issue #18 target 4)
TARGET_ON_TIME_PCT = 99.0

# ----------------------------------------------------------------------------- the local HTTP server

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class _Http(asyncio.Protocol):
    """Answers every request ``200 ok``, keep-alive (a request per chunk of headers ending in a blank
    line; the bench's requests have no body)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(_RESPONSE * n)


async def _serve_http(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------------------------------ helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def post_json(url: str, body: Any) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own CPU, reaped children's CPU) of a process, seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / tick, (cutime + cstime) / tick


@contextlib.contextmanager
def service_process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def job_specs(kind: str, n: int, base: datetime, http_port: int) -> list[dict[str, Any]]:
    payload: dict[str, Any] = ({"url": f"http://127.0.0.1:{http_port}/ok"} if kind == "http"
                               else {"command": "true"})
    return [{"name": f"{kind}-{i}", "type": kind, "schedule": "@every 1s", "misfire_grace": 1,
             "start_at": (base + timedelta(seconds=i / n)).isoformat(), "payload": payload}
            for i in range(n)]


def _parse(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------------------- components

_COMPONENTS = [  # innermost matching frame decides; file paths as py-spy prints them
    ("executor", re.compile(r"chronos_adapters/executors/|/httpx/|/httpcore/|/h11/|/anyio/|"
                            r"asyncio/(subprocess|base_subprocess|unix_events)\.py|/subprocess\.py")),
    ("store", re.compile(r"chronos_adapters/sql/|/sqlalchemy/|/sqlite3/")),
    ("API", re.compile(r"chronos_app/api/|/starlette/|/uvicorn/")),
    ("engine", re.compile(r"chronos_core/|chronos_adapters/memory/|chronos_app/")),
]


def components(raw: Path) -> dict[str, float]:
    """Share of the on-CPU samples by component (see the module docstring), from py-spy's raw output."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        owner = "loop"
        for frame in reversed(frames):
            hit = next((name for name, rx in _COMPONENTS if rx.search(frame)), None)
            if hit is not None:
                owner = hit
                break
        counts[owner] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(v / total, 3) for k, v in counts.most_common()}


# ---------------------------------------------------------------------------------------- one case

def run_case(kind: str, n: int, *, duration: float, warmup: float, concurrency: int,
             profile: bool) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("chronos")
    with tempfile.TemporaryDirectory(prefix="chronos-real-") as tmp_name:
        tmp = Path(tmp_name)
        http_port, api_port = free_port(), free_port()
        env = dict(os.environ, CHRONOS_DATABASE_URL=f"sqlite:///{tmp / 'chronos.db'}",
                   CHRONOS_ALLOW_SHELL="true", CHRONOS_HTTP_ALLOW_HOSTS="127.0.0.1",
                   CHRONOS_CONCURRENCY=str(concurrency))
        with service_process([sys.executable, "-m", "bench.real_jobs", "--http-server", str(http_port)],
                      dict(os.environ), tmp / "http.log") as http, \
                service_process([str(exe), "serve", "--host", "127.0.0.1", "--port", str(api_port)], env,
                         tmp / "serve.log") as serve:
            api = f"http://127.0.0.1:{api_port}"
            wait_http(f"{api}/jobs/health", 60)
            base = datetime.fromtimestamp(math.ceil(time.time()) + 2, UTC)
            t0 = time.perf_counter()
            post_json(f"{api}/jobs/apply", {"jobs": job_specs(kind, n, base, http_port)})
            create_s = time.perf_counter() - t0
            start = max(base.timestamp(), time.time()) + warmup
            time.sleep(max(0.0, math.ceil(start) - time.time()))
            spy = None
            raw = tmp / "profile.txt"
            if profile and shutil.which("py-spy", path=str(exe.parent) + os.pathsep + os.environ["PATH"]):
                spy = subprocess.Popen([shutil.which("py-spy", path=str(exe.parent) + os.pathsep
                                                     + os.environ["PATH"]) or "py-spy", "record",
                                        "--pid", str(serve.pid), "-r", "100", "--nonblocking", "-f", "raw",
                                        "-o", str(raw), "-d", str(int(duration))],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cpu0, kids0 = proc_cpu(serve.pid)
            http0, _ = proc_cpu(http.pid)
            w0 = time.time()
            time.sleep(duration)
            w1 = time.time()
            cpu1, kids1 = proc_cpu(serve.pid)
            http1, _ = proc_cpu(http.pid)
            if spy is not None:
                spy.wait(60)
            time.sleep(1.5)  # the window's last runs finish
            rss_mb = int(Path(f"/proc/{serve.pid}/statm").read_text().split()[1]) * os.sysconf(
                "SC_PAGE_SIZE") / 2**20
        # stopped: read the history
        with sqlite3.connect(tmp / "chronos.db") as db:
            rows = db.execute("SELECT scheduled_for, started_at, status FROM runs").fetchall()
        split = components(raw) if spy is not None and raw.exists() else {}
        if spy is not None and raw.exists():  # kept for a closer look (tree of calls, by thread)
            keep = HERE / "results" / f"real_jobs-{kind}.pyspy.txt"
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(raw, keep)
    lo, hi = float(round(w0)), float(round(w0)) + round(duration)
    lags: list[float] = []
    missed = failed = ran = 0
    for scheduled, started, status in rows:
        s, st = _parse(scheduled), _parse(started)
        if st is not None and w0 <= st < w1:
            ran += 1
        if s is None or not lo <= s < hi:
            continue
        if status == "missed":
            missed += 1
        elif st is not None:
            lags.append(st - s)
            failed += status != "succeeded"
    lags.sort()
    slots = n * round(duration)
    on_time = sum(1 for x in lags if x <= ON_TIME)
    cpu = cpu1 - cpu0
    per_run = cpu * 1e6 / ran if ran else None
    return {
        "bench": "real_jobs", "kind": kind, "n": n, "store": "sqlite", "concurrency": concurrency,
        "window_s": round(w1 - w0, 3), "slots": slots, "executed": len(lags), "on_time": on_time,
        "on_time_pct": round(100 * on_time / slots, 2) if slots else None, "missed": missed,
        "failed": failed, "not_run": slots - len(lags) - missed,
        "lag_p50_ms": _ms(percentile(lags, 0.5)), "lag_p99_ms": _ms(percentile(lags, 0.99)),
        "lag_max_ms": _ms(lags[-1] if lags else None), "started_in_window": ran,
        "cpu_pct": round(100 * cpu / (w1 - w0), 1),
        "cpu_us_per_run": None if per_run is None else round(per_run, 1),
        "children_cpu_us_per_run": round((kids1 - kids0) * 1e6 / ran, 1) if ran else None,
        "http_server_cpu_us_per_run": round((http1 - http0) * 1e6 / ran, 1) if ran and kind == "http"
        else None,
        "components": split,
        "component_us_per_run": ({k: round(v * per_run, 1) for k, v in split.items()}
                                 if per_run is not None else {}),
        "rss_mb": round(rss_mb, 1), "create_s": round(create_s, 3), "machine": machine(),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# ------------------------------------------------------------------------------------------ driver

def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    return f"{med:g}" if len(values) == 1 else f"{med:g} ({min(values):g}-{max(values):g})"


FIELDS = [("on-time %", "on_time_pct"), ("p50 ms", "lag_p50_ms"), ("p99 ms", "lag_p99_ms"),
          ("missed", "missed"), ("failed", "failed"), ("CPU µs/run", "cpu_us_per_run"),
          ("children µs/run", "children_cpu_us_per_run"), ("CPU %", "cpu_pct")]


def report(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| kind | jobs/s | runs | " + " | ".join(f for f, _ in FIELDS) + " | split µs/run |",
             "|" + "---|" * (4 + len(FIELDS))]
    verdicts = []
    for kind in dict.fromkeys(r["kind"] for r in results):
        rs = [r for r in results if r["kind"] == kind and "error" not in r]
        n = next(r["n"] for r in results if r["kind"] == kind)
        split: dict[str, list[float]] = {}
        for r in rs:
            for k, v in r.get("component_us_per_run", {}).items():
                split.setdefault(k, []).append(v)
        parts = ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in
                          sorted(split.items(), key=lambda kv: -statistics.median(kv[1])))
        lines.append(f"| {kind} | {n} | {len(rs)} | "
                     + " | ".join(_spread([r[k] for r in rs if r.get(k) is not None]) for _, k in FIELDS)
                     + f" | {parts or '—'} |")
        pct = [r["on_time_pct"] for r in rs if r.get("on_time_pct") is not None]
        if pct:
            met = "met" if min(pct) >= TARGET_ON_TIME_PCT else (
                "met at the median" if statistics.median(pct) >= TARGET_ON_TIME_PCT else "not met")
            verdicts.append(f"{n} {kind} jobs/s on chronos serve (SQLite): {_spread(pct)} % on time "
                            f"(target {TARGET_ON_TIME_PCT:g} %: {met}); CPU/run "
                            f"{_spread([r['cpu_us_per_run'] for r in rs if r.get('cpu_us_per_run')])} µs "
                            f"({parts or 'no profile'}).")
    return lines + [""] + ["- " + v for v in verdicts]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.real_jobs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one repetition, 5 s windows")
    p.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    p.add_argument("--n", type=int, help="jobs a second (default: http 1000, shell 200)")
    p.add_argument("--duration", type=float, help="measured seconds (default 10, quick 5)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", 64)),
                   help="CHRONOS_CONCURRENCY of the service (default 64)")
    p.add_argument("--repeat", type=int, help="repetitions (default 3, quick 1)")
    p.add_argument("--no-profile", action="store_true", help="no py-spy (no split by component)")
    p.add_argument("--out", type=Path, help="JSON lines (default bench/results/real_jobs.jsonl)")
    p.add_argument("--http-server", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.http_server:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_http(args.http_server))
        return 0
    duration = args.duration or (5.0 if args.quick else 10.0)
    repeat = args.repeat or (1 if args.quick else 3)
    results = []
    for i in range(repeat):
        for kind in args.kinds:
            try:
                r = run_case(kind, args.n or KINDS[kind], duration=duration, warmup=args.warmup,
                             concurrency=args.concurrency, profile=not args.no_profile)
            except Exception as exc:  # reported, not hidden: the other cases still run
                r = {"bench": "real_jobs", "kind": kind, "n": args.n or KINDS[kind],
                     "error": f"{type(exc).__name__}: {exc}"}
            r["repetition"] = i + 1
            results.append(r)
            print(json.dumps(r), flush=True)
    print()
    print("\n".join(report(results)))
    out = args.out or HERE / "results" / "real_jobs.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
