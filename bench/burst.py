"""Bursts: N jobs due at the same instant (``0 * * * *`` for thousands of users' jobs), Chronos and
APScheduler 3.11 side by side: ``python -m bench.burst [--quick]`` (``make bench-burst``; a quick variant
runs inside ``make bench-quick``'s budget).

Each job fires once, at the instant ``T`` (a 6-field cron ``S M H * * *`` in UTC: the next slot of a daily
job, as ``0 0 * * *`` would be). Measured per case, in a fresh process:

* **last started** - when the last of the N runs started, after ``T`` (the target of issue #18: 0.5 s in
  memory, 1 s on SQLite, 1.5 s on MariaDB for 10,000);
* **lag** p50 / p99 / max - start minus the run's slot; with ``--jitter J`` the slot is the *jittered* one
  (Chronos: the run's ``due_at``, ``T`` plus a per-job offset in ``[0, J]``; APScheduler: its trigger's
  ``jitter``, the ``scheduled_run_time`` it reports): target p99 <= 50 ms;
* **CPU per run** - the process's CPU from just before ``T`` until the last run finished, divided by N
  (MariaDB: the server's CPU beside it).

Both systems get a misfire grace of 60 s (so every slot runs and "last started" means what it says; the
runs that still miss are counted) and the interpreter tuning of ``bench.common.tune_process``. Chronos
runs embedded (in-process queue and bus) with the worker concurrency of ``bench.chronos_case`` (16 in
memory, 256 on SQL). Every JSON line carries the machine (``bench.common.machine``) and a calibration
figure: APScheduler's CPU per run in the memory burst of the same repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    RESULT_PREFIX,
    Case,
    ServerCpu,
    case_database,
    cpu_seconds,
    emit,
    machine,
    measured_with,
    peak_rss_mb,
    percentile,
    profiled,
    thread_cpu,
    thread_cpu_delta,
    tune_process,
)

HERE = Path(__file__).resolve().parent
STORES = ("memory", "sqlite", "mariadb")
TARGET_LAST_S = {"memory": 0.5, "sqlite": 1.0, "mariadb": 1.5}
TARGET_JITTER_P99_MS = 50.0
GRACE = 60.0  # misfire grace of both systems, seconds
GIVE_UP = 120.0  # seconds after T (plus the jitter) before a case stops waiting for its last run


@dataclass
class Burst:
    system: str  # chronos | apscheduler
    store: str  # memory | sqlite | mariadb
    n: int = 10_000
    jitter: float = 0.0  # seconds: each job's slot moved by an offset in [0, jitter]
    mysql_url: str = "mysql+pymysql://root@127.0.0.1:3306"

    @property
    def case(self) -> Case:
        """The same store as a :class:`bench.common.Case` (for the shared database helpers)."""
        return Case(self.system, self.store, "cron", self.n, mysql_url=self.mysql_url)

    @property
    def key(self) -> tuple[str, str, int, float]:
        return (self.system, self.store, self.n, self.jitter)


def _lead(b: Burst) -> float:
    """Seconds from now to ``T``: time to create the jobs (APScheduler on SQL: one transaction per job)
    and settle before the burst."""
    per_job = 1 / 2000 if b.store == "memory" else 1 / 500
    return float(os.environ.get("BENCH_BURST_LEAD", 4.0 + b.n * per_job))


def _instant(lead: float) -> datetime:
    return datetime.fromtimestamp(math.ceil(time.time() + lead), UTC)


def _cron(t: datetime) -> str:
    return f"{t.second} {t.minute} {t.hour} * * *"


def _summary(b: Burst, t: datetime, *, lags: list[float], starts: list[float], missed: int, cpu: float,
             server_cpu: float | None, create_s: float, versions: dict[str, str], tuned: bool,
             threads: dict[str, float] | None = None, notes: str = "") -> dict[str, Any]:
    lags.sort()
    t0 = t.timestamp()
    last = max(starts) - t0 if starts else None
    ran = len(starts)
    return {
        "bench": "burst", "system": b.system, "store": b.store, "n": b.n, "jitter": b.jitter,
        "started": ran, "missed": missed, "not_run": b.n - ran - missed,
        "last_started_s": None if last is None else round(last, 3),
        "lag_p50_ms": _ms(percentile(lags, 0.50)), "lag_p99_ms": _ms(percentile(lags, 0.99)),
        "lag_max_ms": _ms(lags[-1] if lags else None),
        "cpu_us_per_run": round(cpu * 1e6 / ran, 1) if ran else None,
        "db_cpu_us_per_run": (round(server_cpu * 1e6 / ran, 1) if ran and server_cpu is not None
                              else None),
        "cpu_s": round(cpu, 3), "thread_cpu_s": threads, "create_s": round(create_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions, "tuned": tuned, "machine": machine(), "notes": notes,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# ------------------------------------------------------------------------------------------ Chronos

async def chronos_burst(b: Burst) -> dict[str, Any]:
    from bench.noop import NoopExecutor, NoopPayload
    from chronos_app import Chronos
    from chronos_core import RunStatus

    case = b.case
    with tempfile.TemporaryDirectory(prefix="chronos-burst-") as tmp, \
            case_database(case, Path(tmp), "chronos_burst") as url:
        versions = measured_with(case, chronos="chronos-scheduler")
        server = ServerCpu() if b.store == "mariadb" else None
        concurrency = int(os.environ.get("BENCH_CONCURRENCY", 16 if b.store == "memory" else 256))
        chronos = Chronos.embedded(database_url=url, executors=[], concurrency=concurrency)
        chronos.register_job_type("noop", NoopPayload, NoopExecutor())
        await chronos.start()
        try:
            t = _instant(_lead(b))
            spec: dict[str, Any] = {"type": "noop", "schedule": _cron(t), "timezone": "UTC",
                                    "misfire_grace": GRACE}
            if b.jitter:
                spec["jitter"] = b.jitter
            t0 = time.perf_counter()
            for i in range(0, b.n, 5000):
                await chronos.jobs.create_many([dict(spec, name=f"burst-{j}")
                                                for j in range(i, min(b.n, i + 5000))])
            create_s = time.perf_counter() - t0
            if time.time() > t.timestamp() - 0.5:
                raise RuntimeError(f"creating {b.n} jobs took {create_s:.1f}s: past the burst's instant")
            tuned = tune_process()
            await asyncio.sleep(max(0.0, t.timestamp() - 1.0 - time.time()))
            worker, scheduler = chronos.worker, chronos.scheduler
            assert worker is not None and scheduler is not None

            def ended() -> int:  # runs finished or recorded missed (by the worker or the claim)
                return sum(worker.stats.by_status.values()) + scheduler.stats.recorded

            with profiled("the burst"):
                await asyncio.sleep(max(0.0, t.timestamp() - 0.05 - time.time()))
                cpu0, db0, threads0 = cpu_seconds(), server.seconds() if server else None, thread_cpu()
                deadline = t.timestamp() + b.jitter + GIVE_UP
                before_burst = ended()
                while ended() - before_burst < b.n and time.time() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)  # (polling two counters: no event to wait on)
                cpu = cpu_seconds() - cpu0
                threads = thread_cpu_delta(threads0, thread_cpu())
                db1 = server.seconds() if server else None
            db = None if db0 is None or db1 is None else db1 - db0
            runs = []
            before = None
            while page := await chronos.store.list_runs(before=before, limit=5000):
                runs.extend(page)
                before = page[-1].id
        finally:
            await chronos.stop(grace=5.0)
    lags: list[float] = []
    starts: list[float] = []
    missed = 0
    for run in runs:
        if run.status is RunStatus.MISSED:
            missed += 1
        elif run.started_at is not None:
            starts.append(run.started_at.timestamp())
            lags.append((run.started_at - run.due_at).total_seconds())
    return _summary(b, t, lags=lags, starts=starts, missed=missed, cpu=cpu, server_cpu=db,
                    create_s=create_s, versions=versions, tuned=tuned, threads=threads,
                    notes="lag: started_at - due_at (the jittered slot) from Chronos's history")


# ------------------------------------------------------------------------------------- APScheduler

_starts: list[float] = []  # per job: when its run started (module-level: jobs on SQL name it by path)


def _mark(i: int) -> None:
    """The job: it notes when it started."""
    _starts[i] = time.time()


def _add_aps_jobs(scheduler: Any, store: Any, trigger: Any, n: int) -> None:
    """N jobs on APScheduler. In memory with ``add_job``; on SQL as one multi-row insert of the rows its
    ``SQLAlchemyJobStore.add_job`` writes (it has no bulk call, and a transaction per job takes minutes on
    a busy disk: the burst, not the creation, is measured here)."""
    from apscheduler.job import Job
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.util import datetime_to_utc_timestamp

    if isinstance(store, MemoryJobStore):
        for i in range(n):
            scheduler.add_job(_mark, trigger, args=[i], id=str(i))
        return
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        job = Job(scheduler, id=str(i), func=_mark, trigger=trigger, executor="default", args=(i,),
                  kwargs={}, name="_mark", misfire_grace_time=int(GRACE), coalesce=True, max_instances=1,
                  next_run_time=trigger.get_next_fire_time(None, now))
        rows.append({"id": job.id, "next_run_time": datetime_to_utc_timestamp(job.next_run_time),
                     "job_state": pickle.dumps(job.__getstate__(), store.pickle_protocol)})
    with store.engine.begin() as conn:
        conn.execute(store.jobs_t.insert(), rows)


def aps_burst(b: Burst) -> dict[str, Any]:
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    case = b.case
    _starts[:] = [0.0] * b.n
    slots: list[float] = [0.0] * b.n
    missed: list[int] = []

    def listener(event: Any) -> None:
        if event.code == EVENT_JOB_MISSED:
            missed.append(1)
        else:
            slots[int(event.job_id)] = event.scheduled_run_time.timestamp()

    with tempfile.TemporaryDirectory(prefix="aps-burst-") as tmp, \
            case_database(case, Path(tmp), "aps_burst") as url:
        versions = measured_with(case, apscheduler="apscheduler")
        server = ServerCpu() if b.store == "mariadb" else None
        store = MemoryJobStore() if url is None else SQLAlchemyJobStore(url=url)
        scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=UTC,
                                        job_defaults={"misfire_grace_time": int(GRACE)})
        scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        scheduler.start(paused=True)
        t = _instant(_lead(b))
        trigger = CronTrigger(hour=t.hour, minute=t.minute, second=t.second, timezone=UTC,
                              jitter=b.jitter or None)  # one for all: a trigger keeps no state
        t0 = time.perf_counter()
        _add_aps_jobs(scheduler, store, trigger, b.n)
        create_s = time.perf_counter() - t0
        if time.time() > t.timestamp() - 0.5:
            scheduler.shutdown(wait=False)
            raise RuntimeError(f"creating {b.n} jobs took {create_s:.1f}s: past the burst's instant")
        tuned = tune_process()
        scheduler.resume()
        time.sleep(max(0.0, t.timestamp() - 0.05 - time.time()))
        cpu0, db0 = cpu_seconds(), server.seconds() if server else None
        deadline = t.timestamp() + b.jitter + GIVE_UP
        while sum(1 for s in slots if s) + len(missed) < b.n and time.time() < deadline:
            time.sleep(0.02)
        cpu = cpu_seconds() - cpu0
        db1 = server.seconds() if server else None
        scheduler.shutdown(wait=False)
    db = None if db0 is None or db1 is None else db1 - db0
    ran = [(s, slot) for s, slot in zip(_starts, slots, strict=True) if s and slot]
    return _summary(b, t, lags=[s - slot for s, slot in ran], starts=[s for s, _ in ran],
                    missed=len(missed), cpu=cpu, server_cpu=db, create_s=create_s, versions=versions,
                    tuned=tuned, notes="no history: the job function records its start, a listener "
                                       "the (jittered) scheduled_run_time"
                                       + ("; jobs inserted in one transaction" if url else ""))


# ------------------------------------------------------------------------------------------ driver

def run_one(b: Burst, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.burst", "--one", json.dumps(dataclasses.asdict(b))]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = {"bench": "burst", "system": b.system, "store": b.store, "n": b.n, "jitter": b.jitter}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
                              env=env)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:g}s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX):]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**base, "error": f"exit {proc.returncode}: {tail}"}


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:g}"
    return f"{med:g} ({min(values):g}-{max(values):g})"


FIELDS = [("last started s", "last_started_s"), ("p50 ms", "lag_p50_ms"), ("p99 ms", "lag_p99_ms"),
          ("max ms", "lag_max_ms"), ("CPU µs/run", "cpu_us_per_run"), ("DB µs/run", "db_cpu_us_per_run"),
          ("missed", "missed"), ("not run", "not_run"), ("create s", "create_s")]


def _groups(results: list[dict[str, Any]]) -> dict[tuple[str, str, int, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, int, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["system"], r["store"], r["n"], r["jitter"]), []).append(r)
    return groups


def table(results: list[dict[str, Any]]) -> str:
    """Median (min-max) over the repetitions, one row per system, store, N and jitter."""
    head = "| system | store | N | jitter s | runs | " + " | ".join(f for f, _ in FIELDS) + " |"
    rows = [head, "|" + "---|" * (5 + len(FIELDS))]
    for (system, store, n, jitter), rs in _groups(results).items():
        ok = [r for r in rs if "error" not in r]
        cells = [_spread([r[k] for r in ok if r.get(k) is not None]) for _, k in FIELDS]
        errors = "; ".join(sorted({r["error"] for r in rs if "error" in r}))
        rows.append(f"| {system} | {store} | {n} | {jitter:g} | {len(ok)}/{len(rs)} | " + " | ".join(cells)
                    + " |" + (f" {errors}" if errors else ""))
    return "\n".join(rows)


def ratios(results: list[dict[str, Any]]) -> list[str]:
    """One line per store, N and jitter: Chronos against its target and against APScheduler."""
    groups = _groups(results)
    lines = []
    for (system, store, n, jitter), rs in groups.items():
        if system != "chronos":
            continue
        ok = [r for r in rs if "error" not in r]
        if not ok:
            continue
        aps = [r for r in groups.get(("apscheduler", store, n, jitter), []) if "error" not in r]
        if jitter:
            key, target, unit = "lag_p99_ms", TARGET_JITTER_P99_MS, "ms"
            what = f"p99 lag behind the jittered slot (jitter {jitter:g} s)"
        else:
            key, target, unit = "last_started_s", TARGET_LAST_S.get(store, 0.0), "s"
            what = "last of the burst started after"
        mine = [r[key] for r in ok if r.get(key) is not None]
        if not mine:
            continue
        med = statistics.median(mine)
        met = "met" if all(v <= target for v in mine) else (
            "met at the median" if med <= target else "not met")
        line = f"{store} burst of {n}: {what} {_spread(mine)} {unit} (target {target:g} {unit}: {met})"
        theirs = [r[key] for r in aps if r.get(key) is not None]
        if theirs:
            other = statistics.median(theirs)
            rel = (f"Chronos {other / med:.1f}x lower" if other >= med
                   else f"Chronos {med / other:.1f}x higher")
            line += f"; APScheduler {_spread(theirs)} {unit} ({rel})"
        cpu = [r["cpu_us_per_run"] for r in ok if r.get("cpu_us_per_run")]
        aps_cpu = [r["cpu_us_per_run"] for r in aps if r.get("cpu_us_per_run")]
        if cpu:
            line += f"; CPU/run {_spread(cpu)} µs"
            if aps_cpu:
                line += f" vs {_spread(aps_cpu)} µs"
        lines.append(line + ".")
    return lines


def _calibrate(results: list[dict[str, Any]], rep: list[dict[str, Any]]) -> None:
    """Stamp every line of a repetition with APScheduler's CPU per run in its memory burst."""
    cal = next((r.get("cpu_us_per_run") for r in rep if r["system"] == "apscheduler"
                and r["store"] == "memory" and not r["jitter"] and "error" not in r), None)
    for r in rep:
        r["calibration_aps_memory_cpu_us_per_run"] = cal
    results.extend(rep)


def plan(args: argparse.Namespace) -> list[Burst]:
    cases: list[Burst] = []
    for store in args.stores:
        for jitter in args.jitter:
            for system in args.systems:
                if system == "apscheduler" and store != "memory" and (jitter or args.quick) and not args.all:
                    continue  # APScheduler's SQL store takes a minute or more per burst
                cases.append(Burst(system, store, args.n, jitter, args.mysql_url))
    if not any(c.system == "apscheduler" and c.store == "memory" and not c.jitter for c in cases):
        cases.insert(0, Burst("apscheduler", "memory", args.n, 0.0, args.mysql_url))  # the calibration
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one repetition, memory and SQLite")
    p.add_argument("--systems", nargs="+", default=["chronos", "apscheduler"])
    p.add_argument("--stores", nargs="+", choices=STORES)
    p.add_argument("--n", type=int, default=10_000, help="jobs due at the same instant")
    p.add_argument("--jitter", nargs="+", type=float, default=[0.0, 10.0],
                   help="jitter of the jobs, seconds (0: none); one case per value")
    p.add_argument("--repeat", type=int, help="repetitions of every case (default 3, quick 1)")
    p.add_argument("--all", action="store_true", help="also APScheduler's SQL stores with jitter")
    p.add_argument("--mysql-url", default=os.environ.get("CHRONOS_BENCH_MYSQL_URL",
                                                         "mysql+pymysql://root@127.0.0.1:3306"))
    p.add_argument("--out", type=Path, help="JSON lines (default bench/results/burst.jsonl)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per case before it is killed")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        from bench import burst  # the jobs name their function by its module path, not __main__

        b = Burst(**json.loads(args.one))
        emit(asyncio.run(burst.chronos_burst(b)) if b.system == "chronos" else burst.aps_burst(b))
        return 0
    args.stores = args.stores or (["memory", "sqlite"] if args.quick else list(STORES))
    repeat = args.repeat or (1 if args.quick else 3)
    from bench.run import mysql_reachable

    mysql_ok = "mariadb" in args.stores and mysql_reachable(args.mysql_url)
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    for i in range(repeat):
        rep: list[dict[str, Any]] = []
        for b in plan(args):
            if b.store == "mariadb" and not mysql_ok:
                r: dict[str, Any] = {"bench": "burst", "system": b.system, "store": b.store, "n": b.n,
                                     "jitter": b.jitter, "error": "skipped: MariaDB not reachable"}
            else:
                r = run_one(b, args.timeout)
            r["repetition"] = i + 1
            rep.append(r)
            print(json.dumps(r), flush=True)
        _calibrate(results, rep)
    print(f"\n{len(results)} cases in {time.monotonic() - began:.0f} s, {repeat} repetition(s); "
          f"median (min-max)\n")
    print(table(results))
    print()
    for line in ratios(results):
        print("- " + line)
    out = args.out or HERE / "results" / "burst.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
