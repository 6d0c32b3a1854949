"""One benchmark case for Chronos, embedded (in-process queue and bus) on the chosen store.

Fire lag comes from Chronos's own history: ``started_at - scheduled_for`` of every run whose slot falls
in the window, read back after the window closed (so reading does not disturb the measurement). The
history also proves every run was recorded.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    Case,
    ServerCpu,
    case_database,
    cpu_seconds,
    emit,
    first_slot,
    measure_window_async,
    measured_with,
    summarise,
    tune_process,
)
from bench.noop import NoopExecutor, NoopPayload
from chronos_app import Chronos
from chronos_core import RunStatus

CHUNK = 5000  # jobs per create_many call (one write each)
DONE = {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED}


def _idle_specs(case: Case) -> list[dict[str, Any]]:
    """The stored jobs that never come due during the case (``stored - n`` of them, first slot an hour
    away). They are created first, so the due jobs start firing only once every job is stored: the
    window then measures a scheduler with ``stored`` jobs in steady state, not one catching up with
    slots that came due while the (on SQL, tens of seconds long) creation ran."""
    idle_start = datetime.now(UTC) + timedelta(hours=1)
    return [{"name": f"bench-{i}", "type": "noop", "schedule": "@every 1d",
             "start_at": idle_start + timedelta(seconds=i % 86400)} for i in range(case.n, case.stored)]


def _due_specs(case: Case, base: datetime) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    schedule = "@every 1s" if case.kind == "interval" else "* * * * * *"
    for i in range(case.n):
        spec: dict[str, Any] = {"name": f"bench-{i}", "type": "noop", "schedule": schedule,
                                "misfire_grace": 1.0}
        if case.kind == "interval":  # the phase of an @every job is its start_at
            spec["start_at"] = base + timedelta(seconds=i / case.n)
        specs.append(spec)
    return specs


async def _history(chronos: Chronos, since: datetime) -> list[Any]:
    """Every run created since ``since`` (newest first, keyset pages)."""
    runs: list[Any] = []
    before = None
    while True:
        page = await chronos.store.list_runs(before=before, limit=5000)
        if not page:
            return runs
        for run in page:
            if run.created_at < since:
                return runs
            runs.append(run)
        before = page[-1].id


async def _idle(chronos: Chronos, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        depth = await chronos.queue.depth()
        if not depth and (chronos.worker is None or chronos.worker.active == 0):
            return
        await asyncio.sleep(0.05)


def _concurrency(case: Case) -> int:
    """Runs in flight at once. With a SQL store each run holds its slot for two group commits (start,
    finish), so it takes more slots to keep up; in memory the default 16 is best (more only adds
    switching)."""
    default = 16 if case.store == "memory" else 256
    return int(os.environ.get("BENCH_CONCURRENCY", default))


async def run_case(case: Case) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chronos-bench-") as tmp, \
            case_database(case, Path(tmp), "chronos_bench") as url:
        return await _run(case, url)


async def _run(case: Case, url: str | None) -> dict[str, Any]:
    versions = measured_with(case, chronos="chronos-scheduler")
    server = ServerCpu() if case.store == "mariadb" else None
    chronos = Chronos.embedded(database_url=url, executors=[],
                               concurrency=_concurrency(case))
    chronos.register_job_type("noop", NoopPayload, NoopExecutor())
    await chronos.start()
    try:
        idle = _idle_specs(case)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        for i in range(0, len(idle), CHUNK):
            await chronos.jobs.create_many(idle[i:i + CHUNK])
            await asyncio.sleep(0)
        create_s, create_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        base = first_slot()
        specs = _due_specs(case, base)  # (their creation is timed too, building the specs is not)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        for i in range(0, len(specs), CHUNK):
            await chronos.jobs.create_many(specs[i:i + CHUNK])
            await asyncio.sleep(0)
        create_s += time.perf_counter() - t0
        create_cpu += cpu_seconds() - cpu0
        tuned = tune_process()
        window = await measure_window_async(case, base, server)
        if chronos.scheduler is not None:
            await chronos.scheduler.stop()
        await _idle(chronos, 30.0)
        runs = await _history(chronos, datetime.fromtimestamp(window.start - 15, UTC))
    finally:
        await chronos.stop(grace=5.0)
    lo, hi = window.slots(case.duration)
    lags: list[float] = []
    missed = skipped = recorded = ran = 0
    for run in runs:
        if run.started_at is not None and window.start <= run.started_at.timestamp() < window.end:
            ran += 1
        slot = run.scheduled_for.timestamp()
        if not lo <= slot < hi:
            continue
        if run.status is RunStatus.MISSED:
            missed += 1
        elif run.status is RunStatus.SKIPPED:
            skipped += 1
        elif run.started_at is not None:
            lags.append((run.started_at - run.scheduled_for).total_seconds())
            if run.status in DONE:
                recorded += 1
    return summarise(case, window, lags=lags, missed=missed, skipped=skipped, recorded=recorded,
                     create_s=create_s, create_cpu_s=create_cpu, versions=versions, tuned=tuned,
                     started_in_window=ran)


def main(case: Case) -> None:
    emit(asyncio.run(run_case(case)))
