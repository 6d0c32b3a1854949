"""One benchmark case for APScheduler 3.11: a ``BackgroundScheduler`` with its default thread pool and
job defaults (misfire grace 1 s, coalesce, one instance per job), on ``MemoryJobStore`` or
``SQLAlchemyJobStore`` (SQLite file, MariaDB).

APScheduler keeps no history, so the job function records its start time and a listener records the
slot of each execution (``scheduled_run_time``); per job they pair up in order (one instance at a time).
Missed slots come from ``EVENT_JOB_MISSED``, skipped ones from ``EVENT_JOB_MAX_INSTANCES``.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    Case,
    ServerCpu,
    case_database,
    cpu_seconds,
    emit,
    first_slot,
    measure_window,
    measured_with,
    summarise,
    tune_process,
)

_starts: list[list[float]] = []


def noop(i: int) -> None:
    """The job: it only notes when it started."""
    _starts[i].append(time.time())


def _store(url: str | None) -> Any:
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    return MemoryJobStore() if url is None else SQLAlchemyJobStore(url=url)


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
    versions = measured_with(case, apscheduler="apscheduler")
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

    with tempfile.TemporaryDirectory(prefix="aps-bench-") as tmp, \
            case_database(case, Path(tmp), "aps_bench") as url:
        scheduler = BackgroundScheduler(jobstores={"default": _store(url)}, timezone=UTC)
        scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
                               | EVENT_JOB_MAX_INSTANCES)
        scheduler.start(paused=True)
        base = first_slot()
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
        window = measure_window(case, base, server)
        scheduler.shutdown(wait=False)
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


def main(case: Case) -> None:
    emit(run_case(case))
