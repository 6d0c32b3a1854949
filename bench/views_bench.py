"""What the operator views cost on a store with a long history: GET /stats, GET /runs (all, by status),
GET /jobs?last_status=failed and a page of job summaries, on SQLite and MariaDB.

    .venv/bin/python -m bench.views_bench [--runs 100000] [--jobs 200] [--backends sqlite,mysql]
                                          [--mysql-url mysql+pymysql://root@127.0.0.1/]

The history is written as the engines write it (queued run, ``start_run``, ``finish_run``: summaries and
per-minute counts come with each finish), spread over the last 24 hours, 10% of the runs failing, and then
every view is read 20 times; the table gives the median and the slowest read in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import scratch_mariadb
from chronos_adapters.sql import SqlStore
from chronos_core import Job, JobStatus, MisfirePolicy, OverlapPolicy, RetryPolicy, RunStatus, Trigger
from chronos_core.ids import new_id
from chronos_core.models import new_run

S = timedelta(seconds=1)


def make_jobs(n: int, now: datetime) -> list[Job]:
    return [Job(id=new_id(), name=f"job-{i:05d}", type="shell", payload={"command": "true"},
                schedule="*/5 * * * *", timezone="UTC", retry=RetryPolicy(), timeout=None,
                overlap=OverlapPolicy.ALLOW, misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=5.0,
                status=JobStatus.ACTIVE if i % 10 else JobStatus.PAUSED, created_at=now - 2 * 86400 * S,
                updated_at=now - 2 * 86400 * S, next_run_at=now + 300 * S) for i in range(n)]


async def fill(store: SqlStore, jobs: list[Job], runs: int, now: datetime, batch: int = 500) -> None:
    start = now - 86400 * S
    step = 86400 / runs
    for first in range(0, runs, batch):
        made = []
        for i in range(first, min(runs, first + batch)):
            job = jobs[i % len(jobs)]
            slot = start + i * step * S
            made.append(new_run(job.id, slot, Trigger.SCHEDULE, slot))
        for run in made:
            await store.add_run(run, dispatched=True)
        await asyncio.gather(*(store.start_run(r.id, "bench", r.scheduled_for, r.scheduled_for + 30 * S)
                               for r in made))
        await asyncio.gather(*(store.finish_run(
            r.id, "bench", status=RunStatus.FAILED if i % 10 == 0 else RunStatus.SUCCEEDED,
            finished_at=r.scheduled_for + S, output="line 1\nline 2") for i, r in enumerate(made)))


async def timed(call: Callable[[], Awaitable[Any]], reads: int = 20) -> tuple[float, float]:
    await call()  # warm
    took = []
    for _ in range(reads):
        t = time.perf_counter()
        await call()
        took.append((time.perf_counter() - t) * 1000)
    return statistics.median(took), max(took)


async def bench(url: str, n_runs: int, n_jobs: int) -> dict[str, tuple[float, float]]:
    store = SqlStore(url, pool_size=8)
    await store.start()
    try:
        now = datetime.now(UTC)
        jobs = make_jobs(n_jobs, now)
        await store.add_jobs(jobs)
        t = time.perf_counter()
        await fill(store, jobs, n_runs, now)
        print(f"  wrote {n_runs} runs in {time.perf_counter() - t:.0f}s")
        failing = {RunStatus.FAILED, RunStatus.TIMED_OUT}
        ids = [j.id for j in jobs[:100]]
        return {
            "stats (jobs, active runs, last hour + day, top 5)": await timed(
                lambda: store.stats([now - 3600 * S, now - 86400 * S])),
            "runs, newest 50": await timed(lambda: store.list_runs(limit=50)),
            "runs ?status=failed,timed_out, newest 50": await timed(
                lambda: store.list_runs(status=failing, limit=50)),
            "runs ?job_id=&status=failed, newest 50": await timed(
                lambda: store.list_runs(jobs[0].id, status=failing, limit=50)),
            "runs ?since= (last hour), newest 50": await timed(
                lambda: store.list_runs(since=now - 3600 * S, limit=50)),
            "jobs ?last_status=failed, 100": await timed(
                lambda: store.list_jobs(last_status={RunStatus.FAILED}, limit=100)),
            "summaries of 100 jobs": await timed(lambda: store.job_summaries(ids)),
        }
    finally:
        await store.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,mysql")
    parser.add_argument("--mysql-url", default="mysql+pymysql://root@127.0.0.1/")
    args = parser.parse_args()
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for backend in args.backends.split(","):
        print(f"{backend}: {args.runs} runs of {args.jobs} jobs")
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                results[backend] = await bench(f"sqlite:///{tmp}/views.db", args.runs, args.jobs)
        else:
            with scratch_mariadb(args.mysql_url, "chronos_views") as url:
                results[backend] = await bench(url, args.runs, args.jobs)
    backends = list(results)
    print(f"\n| view ({args.runs} runs, {args.jobs} jobs) | " + " | ".join(
        f"{b} median / max ms" for b in backends) + " |")
    print("|---|" + "---|" * len(backends))
    for view in next(iter(results.values())):
        print(f"| {view} | " + " | ".join(f"{results[b][view][0]:.1f} / {results[b][view][1]:.1f}"
                                          for b in backends) + " |")


if __name__ == "__main__":
    asyncio.run(main())
