"""One benchmark case for APScheduler 3.11: a ``BackgroundScheduler`` with its default thread pool and
job defaults (misfire grace 1 s, coalesce, one instance per job), on ``MemoryJobStore`` or
``SQLAlchemyJobStore`` (SQLite file, MariaDB).

APScheduler keeps no history, so the job function records its start time and a listener records the
slot of each execution (``scheduled_run_time``); per job they pair up in order (one instance at a time).
Missed slots come from ``EVENT_JOB_MISSED``, skipped ones from ``EVENT_JOB_MAX_INSTANCES``.
"""

from __future__ import annotations

import math
import platform
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import Case, ServerCpu, Window, cpu_seconds, emit, summarise, tune_process

_starts: list[list[float]] = []


def noop(i: int) -> None:
    """The job: it only notes when it started."""
    _starts[i].append(time.time())


def _store(case: Case, tmp: Path) -> tuple[Any, Any]:
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    if case.store == "memory":
        return MemoryJobStore(), lambda: None
    if case.store == "sqlite":
        return SQLAlchemyJobStore(url=f"sqlite:///{tmp / 'aps-bench.db'}"), lambda: None
    import pymysql
    from sqlalchemy.engine import make_url

    name = f"aps_bench_{uuid.uuid4().hex[:10]}"
    url = make_url(case.mysql_url)
    kw = {"host": url.host or "127.0.0.1", "port": url.port or 3306, "user": url.username or "root",
          "password": url.password or ""}
    with pymysql.connect(**kw) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")

    def drop() -> None:
        with pymysql.connect(**kw) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    return SQLAlchemyJobStore(url=url.set(database=name).render_as_string(hide_password=False)), drop


def run_case(case: Case) -> dict[str, Any]:
    from apscheduler.events import (
        EVENT_JOB_ERROR,
        EVENT_JOB_EXECUTED,
        EVENT_JOB_MAX_INSTANCES,
        EVENT_JOB_MISSED,
    )
    from apscheduler.schedulers.background import BackgroundScheduler

    if case.stored != case.n:
        raise ValueError("the APScheduler case stores only the jobs it fires")
    versions = {"apscheduler": metadata.version("apscheduler"), "python": platform.python_version()}
    if case.store == "sqlite":
        versions["sqlite"] = sqlite3.sqlite_version
    if case.store != "memory":
        versions["sqlalchemy"] = metadata.version("sqlalchemy")
    server = ServerCpu() if case.store == "mariadb" else None
    _starts[:] = [[] for _ in range(case.n)]
    slots: list[list[float]] = [[] for _ in range(case.n)]
    missed: list[float] = []
    skipped: list[float] = []

    def listener(event: Any) -> None:
        if event.code == EVENT_JOB_MISSED:
            missed.append(event.scheduled_run_time.timestamp())
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            skipped.extend(t.timestamp() for t in event.scheduled_run_times)
        else:
            slots[int(event.job_id)].append(event.scheduled_run_time.timestamp())

    with tempfile.TemporaryDirectory(prefix="aps-bench-") as tmp:
        store, cleanup = _store(case, Path(tmp))
        try:
            scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=UTC)
            scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
                                   | EVENT_JOB_MAX_INSTANCES)
            scheduler.start(paused=True)
            if case.store == "mariadb":
                versions["mariadb"] = _server_version()
            base = datetime.fromtimestamp(math.ceil(time.time()) + 1, UTC)
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            for i in range(case.n):
                if case.kind == "interval":
                    scheduler.add_job(noop, "interval", seconds=1, args=[i], id=str(i),
                                      start_date=base + timedelta(seconds=i / case.n))
                else:
                    scheduler.add_job(noop, "cron", second="*", args=[i], id=str(i))
            create_s, create_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            tuned = tune_process()
            scheduler.resume()
            start = max(base.timestamp(), time.time()) + case.warmup
            time.sleep(max(0.0, math.ceil(start) - time.time()))
            window = Window()
            window.open(server)
            time.sleep(case.duration)
            window.close()
            time.sleep(1.5)
            scheduler.shutdown(wait=False)
        finally:
            cleanup()
    lo, hi = window.slots(case.duration)
    lags: list[float] = []
    for starts, fired in zip(_starts, slots, strict=True):
        for started, slot in zip(starts, fired, strict=False):
            if lo <= slot < hi:
                lags.append(started - slot)
    ran = sum(1 for starts in _starts for t in starts if window.start <= t < window.end)
    return summarise(case, window, lags=lags, missed=sum(1 for t in missed if lo <= t < hi),
                     skipped=sum(1 for t in skipped if lo <= t < hi), recorded=None,
                     create_s=create_s, create_cpu_s=create_cpu, versions=versions, tuned=tuned,
                     started_in_window=ran,
                     notes="no history: the job function and a listener record each run")


def _server_version() -> str:
    try:
        import pymysql

        with pymysql.connect(host="127.0.0.1", user="root") as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            return str(cur.fetchone()[0])
    except Exception:
        return "?"


def main(case: Case) -> None:
    emit(run_case(case))
