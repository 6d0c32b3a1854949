"""CPU per run of the SQL store on MariaDB through two MySQL drivers (PyMySQL, asyncmy), interleaved:

    .venv/bin/python -m bench.driver_cpu [--due 10000] [--reps 3] [--drivers pymysql asyncmy]

Per repetition and driver (the order alternates per repetition), in a fresh database: ``due`` per-second
jobs stored, then two rounds (the first a warm-up) of what the scheduler and the workers ask of the store
for each of them: the claim (``claim_due`` in batches of 1000) and ``start_run`` + ``finish_run`` (200 at
once, group-committed). CPU time of this process (every thread: the event loop, the store's threads or
its asyncio driver's loop) and of the local ``mariadbd``, per run, for the measured round; wall time is
printed too but a shared machine's load moves it (CPU per run is what to compare). One JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from datetime import timedelta

from sqlalchemy.engine import make_url

from bench.common import ServerCpu, scratch_mariadb
from bench.store_bench import S, T, make_jobs, record
from chronos_adapters.sql import SqlStore
from chronos_core.planning import plan_due_job


async def one(url: str, due: int) -> dict[str, float]:
    store = SqlStore(url, pool_size=8)
    await store.start()
    try:
        jobs = make_jobs(due, due)
        for i in range(0, due, 5000):
            await store.add_jobs(jobs[i:i + 5000])
        server = ServerCpu(make_url(url).port or 3306)
        out: dict[str, float] = {}
        for k in range(2):
            now = T + k * S + timedelta(milliseconds=100)
            c0, s0, w0 = time.process_time(), server.seconds(), time.perf_counter()
            ids: list[str] = []
            while True:
                claim = await store.claim_due(now, 1000, plan_due_job)
                ids.extend(d.run.id for d in claim.dispatch)
                if claim.jobs < 1000:
                    break
            c1 = time.process_time()
            await record(store, ids, now, 200)
            c2, s2, w2 = time.process_time(), server.seconds(), time.perf_counter()
            assert len(ids) == due, (len(ids), due)
            out = {"claim_cpu_us": (c1 - c0) / due * 1e6, "record_cpu_us": (c2 - c1) / due * 1e6,
                   "cpu_us_per_run": (c2 - c0) / due * 1e6, "wall_ms": (w2 - w0) * 1000}
            if s0 is not None and s2 is not None:
                out["db_cpu_us_per_run"] = (s2 - s0) / due * 1e6
        return {k: round(v, 1) for k, v in out.items()}
    finally:
        await store.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--due", type=int, default=10000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--drivers", nargs="+", default=["pymysql", "asyncmy"])
    p.add_argument("--mysql-url", default=os.environ.get("CHRONOS_BENCH_MYSQL_URL",
                                                         "mysql+pymysql://root@127.0.0.1:3306"))
    args = p.parse_args(argv)
    for rep in range(args.reps):
        order = args.drivers if rep % 2 == 0 else list(reversed(args.drivers))
        for driver in order:
            server = make_url(args.mysql_url).set(drivername=f"mysql+{driver}")
            load = os.getloadavg()[0]
            with scratch_mariadb(server.render_as_string(hide_password=False), "chronos_drv") as url:
                row = {"driver": driver, "rep": rep, "due": args.due, "load1": round(load, 2),
                       **asyncio.run(one(url, args.due))}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
