"""The one-liner, side by side: APScheduler 3.11 ``scheduler.add_job(func, "interval", seconds=1)`` vs
Chronos ``chronos.schedule(func, "@every 1s")`` (a ``python`` job), N plain sync functions, in memory and
on a SQLite file. Each case in a fresh process::

    python -m bench.oneliner                 # 1k and 10k, memory and sqlite, both systems
    python -m bench.oneliner --case chronos sqlite 1000 --duration 5

Measured: the time and CPU to declare the N jobs the way the one-liner does (a call per job; Chronos
also as ``@chronos.scheduled`` before start, applied in one write: ``chronos-decorated``), then a
window of ``duration`` seconds: runs started per second, fire lag (start - slot) p50/p99, the share of
the window's slots that started within 1 s, CPU per second and peak RSS. Both systems get the interpreter
tuning of ``bench.run`` once their jobs are declared (``BENCH_TUNING=0``: CPython's defaults).
Chronos's lag comes from its run history (which APScheduler does not keep: its job function and a
listener record the times). ``BENCH_CONCURRENCY`` / ``BENCH_PYTHON_THREADS`` change Chronos's worker
concurrency (16) and python thread pool (8) from their defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import tune_process  # both systems, as in bench.run (BENCH_TUNING=0: CPython's defaults)

PREFIX = "ONELINER-RESULT "
_starts: list[list[float]] = []


def work(i: int) -> None:
    """The scheduled function: a plain sync function that notes when it ran (APScheduler side)."""
    _starts[i].append(time.time())


def chronos_work(i: int) -> int:
    """The same for Chronos (its start time is in the run history)."""
    return i


def _summary(system: str, store: str, n: int, duration: float, create_s: float, create_cpu: float,
             lags: list[float], ran: int, cpu: float, expected: int) -> dict[str, Any]:
    lags.sort()

    def q(p: float) -> float | None:
        return round(lags[min(len(lags) - 1, int(p * len(lags)))] * 1000, 1) if lags else None

    on_time = sum(1 for x in lags if x < 1.0)
    return {"system": system, "store": store, "n": n, "duration": duration,
            "declare_s": round(create_s, 2), "declare_cpu_s": round(create_cpu, 2),
            "runs_per_s": round(ran / duration, 1), "lag_p50_ms": q(0.5), "lag_p99_ms": q(0.99),
            "on_time": round(on_time / expected, 4) if expected else None,
            "cpu_per_s": round(cpu / duration, 2), "cpu_us_per_run": round(cpu / ran * 1e6) if ran else None,
            "load_avg": round(os.getloadavg()[0], 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_aps(store: str, n: int, duration: float, warmup: float) -> dict[str, Any]:
    from apscheduler.events import EVENT_JOB_EXECUTED
    from apscheduler.schedulers.background import BackgroundScheduler

    _starts[:] = [[] for _ in range(n)]
    slots: list[list[float]] = [[] for _ in range(n)]

    def listener(event: Any) -> None:
        slots[int(event.job_id)].append(event.scheduled_run_time.timestamp())

    with tempfile.TemporaryDirectory() as tmp:
        jobstores: dict[str, Any] = {}
        if store == "sqlite":
            from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

            jobstores["default"] = SQLAlchemyJobStore(url=f"sqlite:///{tmp}/aps.db")
        scheduler = BackgroundScheduler(jobstores=jobstores, timezone=UTC)
        scheduler.add_listener(listener, EVENT_JOB_EXECUTED)
        # paused while the jobs are added, as bench.aps_case does: on SQLite a running scheduler's
        # updates and the adds contend for the file, and adding 1k jobs took minutes
        scheduler.start(paused=True)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):  # the one-liner, as users write it (an id to pair the times up)
            scheduler.add_job(work, "interval", seconds=1, args=[i], id=str(i))
        create_s, create_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        tune_process()
        scheduler.resume()
        time.sleep(warmup)
        w0, c0 = time.time(), time.process_time()
        time.sleep(duration)
        w1, c1 = time.time(), time.process_time()
        time.sleep(1.5)
        scheduler.shutdown(wait=False)
    lags = [started - slot for starts, fired in zip(_starts, slots, strict=True)
            for started, slot in zip(starts, fired, strict=False) if w0 <= slot < w1]
    ran = sum(1 for starts in _starts for t in starts if w0 <= t < w1)
    return _summary("apscheduler", store, n, duration, create_s, create_cpu, lags, ran, c1 - c0,
                    expected=int(n * duration))


async def run_chronos(store: str, n: int, duration: float, warmup: float, batch: bool = False
                      ) -> dict[str, Any]:
    from chronos_adapters.executors import ExecutorConfig
    from chronos_app import Chronos

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/chronos.db" if store == "sqlite" else None
        config = ExecutorConfig(python_threads=int(os.environ.get("BENCH_PYTHON_THREADS", 8)))
        chronos = Chronos.embedded(database_url=url, executor_config=config,
                                   concurrency=int(os.environ.get("BENCH_CONCURRENCY", 16)))
        cpu0, t0 = time.process_time(), time.perf_counter()
        if batch:  # @chronos.scheduled before start: start() applies them all in one write
            for i in range(n):
                chronos.scheduled("@every 1s", name=f"work-{i}", args=[i])(chronos_work)
        async with chronos:
            if not batch:
                for i in range(n):  # the one-liner, as users write it, on a running Chronos
                    await chronos.schedule(chronos_work, "@every 1s", name=f"work-{i}", args=[i])
            create_s, create_cpu = time.perf_counter() - t0, time.process_time() - cpu0
            tune_process()
            await asyncio.sleep(warmup)
            w0, c0 = time.time(), time.process_time()
            await asyncio.sleep(duration)
            w1, c1 = time.time(), time.process_time()
            await asyncio.sleep(1.5)
            assert chronos.scheduler is not None
            await chronos.scheduler.stop()
            since = datetime.fromtimestamp(w0 - 5, UTC)
            runs: list[Any] = []
            before = None
            while page := await chronos.store.list_runs(before=before, limit=5000):
                runs.extend(r for r in page if r.created_at >= since)
                if page[-1].created_at < since:
                    break
                before = page[-1].id
    lags = [(r.started_at - r.scheduled_for).total_seconds() for r in runs
            if r.started_at is not None and w0 <= r.scheduled_for.timestamp() < w1]
    ran = sum(1 for r in runs if r.started_at is not None and w0 <= r.started_at.timestamp() < w1)
    return _summary("chronos-decorated" if batch else "chronos", store, n, duration, create_s, create_cpu,
                    lags, ran, c1 - c0, expected=int(n * duration))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs=3, metavar=("SYSTEM", "STORE", "N"))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--n", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--stores", nargs="*", default=["memory", "sqlite"])
    parser.add_argument("--systems", nargs="*", default=["apscheduler", "chronos", "chronos-decorated"])
    parser.add_argument("--case-timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.case:
        system, store, n = args.case[0], args.case[1], int(args.case[2])
        if system == "apscheduler":
            result = run_aps(store, n, args.duration, args.warmup)
        else:
            result = asyncio.run(run_chronos(store, n, args.duration, args.warmup,
                                             batch=system == "chronos-decorated"))
        print(PREFIX + json.dumps(result), flush=True)
        return
    for n in args.n:
        for store in args.stores:
            for system in args.systems:
                try:
                    out = subprocess.run([sys.executable, "-m", "bench.oneliner", "--case", system, store,
                                          str(n), "--duration", str(args.duration), "--warmup",
                                          str(args.warmup)], capture_output=True, text=True,
                                         cwd=Path(__file__).parents[1], timeout=args.case_timeout)
                except subprocess.TimeoutExpired:
                    print(json.dumps({"system": system, "store": store, "n": n,
                                      "error": f"not done in {args.case_timeout:g}s"}), flush=True)
                    continue
                line = next((x for x in out.stdout.splitlines() if x.startswith(PREFIX)), None)
                if line is None:
                    print(f"{system} {store} {n}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                print(line.removeprefix(PREFIX), flush=True)


if __name__ == "__main__":
    main()
