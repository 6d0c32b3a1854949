"""What every benchmark case shares: the configuration, the measurements and the summary of one run.

A case runs in a fresh process (see ``bench.run``); it creates its jobs, lets the scheduler warm up, then
measures a window of ``duration`` seconds: every slot whose time falls in the window is expected to run
once. Fire lag is the run's start minus its slot time. CPU is the benchmark process's own (user + system,
every thread); for MariaDB the server's CPU over the same window is reported beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ON_TIME = 1.0
"""A slot counts as executed on time when its run started within this many seconds of the slot (the
period of the jobs: later than that, the next slot is already due)."""

RESULT_PREFIX = "BENCH-RESULT "


@dataclass
class Case:
    system: str  # chronos | apscheduler
    store: str  # memory | sqlite | mariadb
    kind: str  # interval | cron
    n: int  # jobs due every second
    stored: int = 0  # jobs stored in all (0: same as n); the others never come due during the case
    duration: float = 10.0  # measured window, seconds
    warmup: float = 3.0
    mysql_url: str = "mysql+pymysql://root@127.0.0.1:3306"

    def __post_init__(self) -> None:
        if not self.stored:
            self.stored = self.n

    @property
    def label(self) -> str:
        n = _k(self.n) if self.stored == self.n else f"{_k(self.n)}/{_k(self.stored)}"
        return f"{self.system} {self.store} {self.kind} {n}"


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def tune_process() -> bool:
    """The same interpreter tuning for both systems once a case is set up (jobs created): what
    ``chronos serve | scheduler | worker`` apply after start-up (``chronos_app.tuning.tune_process``:
    ``gc.freeze()``, a young threshold of 7000, a 0.5 ms GIL switch interval). ``BENCH_TUNING=0``
    measures CPython's defaults."""
    if os.environ.get("BENCH_TUNING", "1") == "0":
        return False
    from chronos_app.tuning import tune_process as tune

    tune()
    return True


def cpu_seconds() -> float:
    """CPU used by this process so far (user + system, all threads; nanosecond clock, not ticks)."""
    return time.process_time()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ServerCpu:
    """CPU of the local MariaDB server (``mariadbd``/``mysqld``), if it runs on this machine: the one
    listening on ``port`` (a shared machine may run private servers too), else the first found."""

    def __init__(self, port: int | None = 3306) -> None:
        self._proc = None
        try:
            import psutil

            servers = [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("mariadbd", "mysqld")]
            for p in servers:
                with contextlib.suppress(Exception):
                    if any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                           for c in p.net_connections(kind="tcp")):
                        self._proc = p
                        break
            if self._proc is None and servers:
                self._proc = servers[0]
        except Exception:  # psutil missing or access denied: report nothing
            self._proc = None

    def seconds(self) -> float | None:
        if self._proc is None:
            return None
        try:
            t = self._proc.cpu_times()
        except Exception:
            return None
        return float(t.user + t.system)


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


@dataclass
class Window:
    """Clock and CPU readings at the start and end of the measured window."""

    start: float = 0.0
    end: float = 0.0
    cpu: float = 0.0
    server_cpu: float | None = None
    _server: ServerCpu | None = None

    def open(self, server: ServerCpu | None) -> None:
        self._server = server
        self.cpu = cpu_seconds()
        self.server_cpu = server.seconds() if server else None
        self.start = time.time()

    def slots(self, duration: float) -> tuple[float, float]:
        """The slot times measured, [lo, lo + duration): whole seconds from the one the window opened on
        (a busy event loop may close the window late: the slots counted stay ``duration`` seconds)."""
        lo = float(round(self.start))
        return lo, lo + round(duration)

    def close(self) -> None:
        self.end = time.time()
        self.cpu = cpu_seconds() - self.cpu
        if self._server is not None and self.server_cpu is not None:
            now = self._server.seconds()
            self.server_cpu = None if now is None else now - self.server_cpu
        else:
            self.server_cpu = None


def summarise(case: Case, window: Window, *, lags: list[float], missed: int, skipped: int,
              recorded: int | None, create_s: float, create_cpu_s: float, versions: dict[str, str],
              tuned: bool, started_in_window: int, notes: str = "") -> dict[str, Any]:
    """The result line of one case. ``lags``: fire lag (s) of every run whose slot is in the window;
    ``missed``/``skipped``: slots in the window recorded (or reported) as missed / skipped; ``recorded``:
    runs of the window found in history (None when the system keeps no history); ``started_in_window``:
    runs (of any slot) that started while the window was open, what the window's CPU was spent on — a
    system that falls behind runs the window's late slots after it closes, so dividing by the window's
    slots would understate its cost per run."""
    nominal = case.n * round(case.duration)
    lags.sort()
    on_time = sum(1 for x in lags if x <= ON_TIME)
    executed = len(lags)
    seconds = case.duration
    actual = max(window.end - window.start, 1e-9)
    ran = started_in_window
    cpu_us = window.cpu * 1e6 / ran if ran else None
    server_us = window.server_cpu * 1e6 / ran if ran and window.server_cpu is not None else None
    return {
        "system": case.system,
        "store": case.store,
        "kind": case.kind,
        "n": case.n,
        "stored": case.stored,
        "window_s": round(window.end - window.start, 3),
        "nominal_per_s": case.n,
        "on_time_per_s": round(on_time / seconds, 1),
        "slots": nominal,
        "executed": executed,
        "on_time": on_time,
        "on_time_pct": round(100.0 * on_time / nominal, 3) if nominal else None,
        "missed": missed,
        "skipped": skipped,
        "not_run": max(0, nominal - executed - missed - skipped),
        "recorded": recorded,
        "lag_p50_ms": _ms(percentile(lags, 0.50)),
        "lag_p99_ms": _ms(percentile(lags, 0.99)),
        "lag_max_ms": _ms(lags[-1] if lags else None),
        "cpu_us_per_run": None if cpu_us is None else round(cpu_us, 1),
        "started_in_window": ran,
        "cpu_pct": round(100.0 * window.cpu / actual, 1),
        "db_cpu_us_per_run": None if server_us is None else round(server_us, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "create_s": round(create_s, 3),
        "create_cpu_s": round(create_cpu_s, 3),
        "versions": versions,
        "tuned": tuned,
        "notes": notes,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def emit(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def case_from_json(text: str) -> Case:
    data = json.loads(text)
    fields = {f.name for f in dataclasses.fields(Case)}
    return Case(**{k: v for k, v in data.items() if k in fields})


def phase_offsets(n: int) -> list[float]:
    """Phases spread evenly over one second, one per job."""
    return [i / n for i in range(n)]


# ---------------------------------------------------------------- what the cases and tools share

def mysql_connect_kwargs(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return {"host": u.host or "127.0.0.1", "port": u.port or 3306, "user": u.username or "root",
            "password": u.password or ""}


@contextlib.contextmanager
def scratch_mariadb(server_url: str, prefix: str) -> Iterator[str]:
    """A database of its own on the MariaDB server of ``server_url`` for one run, dropped afterwards;
    yields its SQLAlchemy URL."""
    import pymysql
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    kw = mysql_connect_kwargs(server_url)
    with pymysql.connect(**kw) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with pymysql.connect(**kw) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@contextlib.contextmanager
def case_database(case: Case, tmp: Path, prefix: str) -> Iterator[str | None]:
    """The case's store as a SQLAlchemy URL: ``None`` in memory, a file in ``tmp`` for SQLite, a scratch
    database on MariaDB."""
    if case.store == "memory":
        yield None
    elif case.store == "sqlite":
        yield f"sqlite:///{tmp / (prefix + '.db')}"
    else:
        with scratch_mariadb(case.mysql_url, prefix) as url:
            yield url


def server_version(url: str) -> str:
    """``SELECT VERSION()`` of the MariaDB server of ``url`` ("?" when it cannot be read)."""
    try:
        import pymysql

        with pymysql.connect(**mysql_connect_kwargs(url)) as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
            return str(row[0]) if row else "?"
    except Exception:
        return "?"


def measured_with(case: Case, **packages: str) -> dict[str, str]:
    """What the result was measured with: each named distribution's version (``name=distribution``),
    Python, and the store's own versions."""
    v = {name: metadata.version(dist) for name, dist in packages.items()}
    v["python"] = platform.python_version()
    if case.store == "sqlite":
        v["sqlite"] = sqlite3.sqlite_version
    if case.store != "memory":
        v["sqlalchemy"] = metadata.version("sqlalchemy")
    if case.store == "mariadb":
        v["mariadb"] = server_version(case.mysql_url)
    return v


SETTLE = 1.5
"""Seconds after the window closes for the runs of its last slots to finish."""


def first_slot() -> datetime:
    """The first slot of the due jobs: the next whole second but one."""
    return datetime.fromtimestamp(math.ceil(time.time()) + 1, UTC)


def warmup_delay(base: datetime, warmup: float) -> float:
    """Seconds to wait before the window opens: the warm-up after the jobs' first slot (or now, if
    creating them took longer), rounded up to a whole second so the window holds whole seconds."""
    start = max(base.timestamp(), time.time()) + warmup
    return max(0.0, math.ceil(start) - time.time())


def measure_window(case: Case, base: datetime, server: ServerCpu | None) -> Window:
    """Warm up, measure the window, let its last runs finish (a thread-based system: blocking sleeps)."""
    time.sleep(warmup_delay(base, case.warmup))
    window = Window()
    window.open(server)
    time.sleep(case.duration)
    window.close()
    time.sleep(SETTLE)
    return window


async def measure_window_async(case: Case, base: datetime, server: ServerCpu | None) -> Window:
    """:func:`measure_window` for a system on this event loop."""
    await asyncio.sleep(warmup_delay(base, case.warmup))
    window = Window()
    window.open(server)
    await asyncio.sleep(case.duration)
    window.close()
    await asyncio.sleep(SETTLE)
    return window


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "?"


def machine() -> dict[str, Any]:
    """What a figure was measured on: the CPU model, the cores, the load average when the case began
    (the machine is shared: judge by ratios to a peer measured in the same run)."""
    model = cpu_model()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu": model, "cores": os.cpu_count(), "load1": round(load[0], 2)}


def thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by each live thread of this process, grouped by the thread's name without
    a pool's ``_<n>`` suffix (``MainThread`` is the event loop; ``chronos-sql`` the SQL store's threads)."""
    import re
    import threading

    out: dict[str, float] = {}
    for t in threading.enumerate():
        if t.ident is None:
            continue
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, AttributeError):  # the thread ended meanwhile, or no such clock here
            continue
        name = re.sub(r"_\d+$", "", t.name)
        out[name] = out.get(name, 0.0) + seconds
    return out


def thread_cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per thread group, the CPU seconds between two :func:`thread_cpu` readings (a group that started
    in between counts from zero)."""
    return {k: round(v - before.get(k, 0.0), 3) for k, v in sorted(after.items(), key=lambda kv: -kv[1])
            if v - before.get(k, 0.0) > 0.0005}


@contextlib.contextmanager
def profiled(what: str) -> Iterator[None]:
    """With ``BENCH_PYSPY=<file>``: ``py-spy record`` this process (raw folded stacks into ``<file>``, for
    ``what`` only), with ``BENCH_PYSPY_ARGS`` (e.g. ``--gil``, ``--threads``); else nothing."""
    import shlex
    import signal
    import subprocess
    import sys

    out = os.environ.get("BENCH_PYSPY")
    if not out:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy if spy.exists() else "py-spy"), "record", "--pid", str(os.getpid()), "-r", "200",
           "-f", "raw", "-o", out, *shlex.split(os.environ.get("BENCH_PYSPY_ARGS", ""))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        print(f"profile of {what}: {out}", flush=True)
