"""What the hooks cost the finish path: ``finish_run`` of N running runs at once (as a busy worker's
group commit gets them) on SQLite and MariaDB, for jobs without hooks (the fast path), with hooks that
the outcome does not set off (the worker passes none: the same fast path), and with a notification per
outcome (the select path plus one notice row per finish).

    .venv/bin/python -m bench.hooks_bench [--runs 2000] [--backends sqlite,mysql]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta

from bench.common import scratch_mariadb
from chronos_adapters.sql import SqlStore
from chronos_core import Job, JobStatus, MisfirePolicy, OverlapPolicy, RetryPolicy, RunStatus, Trigger
from chronos_core.hooks import outcome_hooks
from chronos_core.hookspec import NotifyRule
from chronos_core.ids import new_id
from chronos_core.models import new_run

S = timedelta(seconds=1)
RULE = NotifyRule.model_validate({"on": ["succeeded"], "webhook": {"url": "https://hooks.example/x"}})


def job(name: str, notify: list[NotifyRule], now: datetime) -> Job:
    return Job(id=new_id(), name=name, type="shell", payload={"command": "true"}, schedule=None,
               timezone="UTC", retry=RetryPolicy(), timeout=None, overlap=OverlapPolicy.ALLOW,
               misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=5.0, status=JobStatus.ACTIVE,
               created_at=now, updated_at=now, notify=notify)


async def case(store: SqlStore, j: Job, runs: int, now: datetime) -> float:
    made = [new_run(j.id, now + i * S, Trigger.MANUAL, now, due_at=now) for i in range(runs)]
    for r in made:
        await store.add_run(r, dispatched=True)
    await asyncio.gather(*(store.start_run(r.id, "w", now, now + 60 * S) for r in made))
    hooks = outcome_hooks(j, (), RunStatus.SUCCEEDED, True)
    t = time.perf_counter()
    done = await asyncio.gather(*(store.finish_run(r.id, "w", status=RunStatus.SUCCEEDED, finished_at=now + S,
                                                   hooks=hooks) for r in made))
    elapsed = time.perf_counter() - t
    assert all(done)
    return elapsed


async def bench(url: str, runs: int) -> dict[str, float]:
    store = SqlStore(url)
    await store.start()
    now = datetime.now(UTC).replace(microsecond=0)
    out = {}
    try:
        for label, notify in (("no hooks", []), ("hooks, not set off",
                                                 [NotifyRule.model_validate({"on": ["failed"], "email": {
                                                     "to": ["ops@example.com"]}})]),
                              ("a notice per finish", [RULE])):
            j = job(label, notify, now)
            await store.add_jobs([j])
            out[label] = await case(store, j, runs, now)
    finally:
        await store.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--backends", default="sqlite,mysql")
    p.add_argument("--mysql-url", default="mysql+pymysql://root@127.0.0.1/")
    a = p.parse_args()
    print(f"| backend | case | {a.runs} finishes (s) | per finish (µs) |\n|---|---|---|---|")
    for backend in a.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as d:
                got = asyncio.run(bench(f"sqlite:///{d}/b.db", a.runs))
        else:
            with scratch_mariadb(a.mysql_url, "chronos_hooks_bench") as url:
                got = asyncio.run(bench(url, a.runs))
        for label, secs in got.items():
            print(f"| {backend} | {label} | {secs:.3f} | {secs / a.runs * 1e6:.0f} |")


if __name__ == "__main__":
    main()
