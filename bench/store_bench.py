"""Store benchmark: due-job claims per second and runs recorded per second on SQLite and MariaDB, with
1k / 10k / 100k stored jobs, to show that a claim's cost does not grow with the number of stored jobs.

    .venv/bin/python bench/store_bench.py [--jobs 1000,10000,100000] [--due 1000] [--rounds 5]
                                          [--backends sqlite,mysql] [--mysql-url mysql+pymysql://root@127.0.0.1/]

Per backend and size: N jobs are stored, ``due`` of them per-second jobs due in each round, the rest due
tomorrow. A round claims the due ones with the real planner (``claim_due`` in batches of 1000: select,
plan, insert the runs, advance next_run_at, commit), then records every claimed run as a worker would:
``start_run`` then ``finish_run`` (``concurrency`` runs at once; concurrent calls are group-committed).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta

from bench.common import scratch_mariadb
from chronos_adapters.sql import SqlStore
from chronos_core import Job, JobStatus, MisfirePolicy, OverlapPolicy, RetryPolicy, RunStatus
from chronos_core.ids import new_id
from chronos_core.planning import plan_due_job

T = datetime(2030, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)


def make_jobs(n: int, due: int) -> list[Job]:
    out = []
    for i in range(n):
        is_due = i % max(1, n // due) == 0
        out.append(Job(id=new_id(), name=f"job-{i:06d}", type="shell", payload={"command": f"echo {i}"},
                       schedule="*/1 * * * * *", timezone="UTC", retry=RetryPolicy(), timeout=None,
                       overlap=OverlapPolicy.ALLOW, misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=5.0,
                       status=JobStatus.ACTIVE, created_at=T - S, updated_at=T - S,
                       next_run_at=T if is_due else T + timedelta(days=1)))
    return out


async def record(store: SqlStore, run_ids: list[str], now: datetime, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(run_id: str) -> None:
        async with sem:
            assert await store.start_run(run_id, "bench", now, now + 30 * S)
            assert await store.finish_run(run_id, "bench", status=RunStatus.SUCCEEDED, finished_at=now,
                                          exit_code=0, output="ok\n")

    await asyncio.gather(*(one(r) for r in run_ids))


async def bench(url: str, n: int, due: int, rounds: int, concurrency: int) -> dict[str, float]:
    store = SqlStore(url, pool_size=8)
    await store.start()
    try:
        jobs = make_jobs(n, due)
        for i in range(0, n, 5000):
            await store.add_jobs(jobs[i:i + 5000])
        claim_times, claimed, record_times, recorded, batch_ms = [], 0, [], 0, []
        for k in range(rounds):
            now = T + k * S + timedelta(milliseconds=100)
            t0 = time.perf_counter()
            ids: list[str] = []
            while True:
                b0 = time.perf_counter()
                claim = await store.claim_due(now, 1000, plan_due_job)
                if claim.jobs:
                    batch_ms.append((time.perf_counter() - b0) * 1000 / claim.jobs * 1000)
                ids.extend(d.run.id for d in claim.dispatch)
                if claim.jobs < 1000:
                    break
            claim_times.append(time.perf_counter() - t0)
            claimed += len(ids)
            t0 = time.perf_counter()
            await record(store, ids, now, concurrency)
            record_times.append(time.perf_counter() - t0)
            recorded += len(ids)
        t0 = time.perf_counter()
        for _ in range(50):
            await store.next_due_time()
        next_due_ms = (time.perf_counter() - t0) / 50 * 1000
        return {"claims_per_s": claimed / sum(claim_times), "runs_per_s": recorded / sum(record_times),
                "ms_per_1000_claims": statistics.median(batch_ms), "next_due_ms": next_due_ms,
                "claimed": claimed}
    finally:
        await store.stop()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default="1000,10000,100000")
    p.add_argument("--due", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--backends", default="sqlite,mysql")
    p.add_argument("--mysql-url", default="mysql+pymysql://root@127.0.0.1:3306/")
    args = p.parse_args()
    print("| backend | stored jobs | due per round | claims/s | ms per 1000 claimed | runs recorded/s "
          "(start+finish) | next_due_time ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for backend in args.backends.split(","):
        for n in (int(x) for x in args.jobs.split(",")):
            with contextlib.ExitStack() as stack:
                if backend == "sqlite":
                    url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/bench.db"
                else:
                    url = stack.enter_context(scratch_mariadb(args.mysql_url, "chronos_bench"))
                r = await bench(url, n, args.due, args.rounds, args.concurrency)
            print(f"| {backend} | {n:,} | {args.due:,} | {r['claims_per_s']:,.0f} | "
                  f"{r['ms_per_1000_claims']:.0f} | {r['runs_per_s']:,.0f} | {r['next_due_ms']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    asyncio.run(main())
