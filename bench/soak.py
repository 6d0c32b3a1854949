"""Soak: ``chronos serve`` on SQLite running N HTTP jobs a second (default 500) against a local server for
a long time with the service-wide retention on, reporting every ``--every`` seconds the service's RSS, the
SQLite file's size (with its WAL), the runs stored and the runs started, late and missed in the last
interval: ``python -m bench.soak --minutes 30`` (issue #18 target 6: flat RSS and file size).

Retention: ``CHRONOS_HISTORY_MAX_RUNS`` (default 20 runs per job) and ``CHRONOS_HISTORY_MAX_AGE`` (default
600 s), swept every ``CHRONOS_PRUNE_INTERVAL`` (default 30 s). Each line is JSON (``bench.common.machine``
in the first); a summary says how RSS and size moved between the first report after warm-up and the last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import machine
from bench.real_jobs import free_port, job_specs, post_json, proc_cpu, service_process, wait_http


def _size_mb(db: Path) -> float:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists()) / 2**20


def _rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _interval(db: Path, since: float, until: float) -> dict[str, int]:
    """Runs stored, and of the slots in [since, until): started, started over 1 s late, missed."""
    lo = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%S")
    hi = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        stored = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        rows = conn.execute("SELECT status, (julianday(started_at) - julianday(scheduled_for)) * 86400 "
                            "FROM runs WHERE scheduled_for >= ? AND scheduled_for < ?", (lo, hi)).fetchall()
    started = [lag for status, lag in rows if lag is not None]
    return {"stored_runs": stored, "started": len(started), "late": sum(1 for x in started if x > 1.0),
            "missed": sum(1 for status, _ in rows if status == "missed")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="HTTP jobs a second")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--every", type=float, default=60.0, help="seconds between reports")
    p.add_argument("--max-runs", type=int, default=20, help="CHRONOS_HISTORY_MAX_RUNS")
    p.add_argument("--max-age", type=float, default=600.0, help="CHRONOS_HISTORY_MAX_AGE, seconds")
    p.add_argument("--prune-interval", type=float, default=30.0, help="CHRONOS_PRUNE_INTERVAL")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--out", type=Path, help="JSON lines (default bench/results/soak.jsonl)")
    args = p.parse_args(argv)
    exe = Path(sys.executable).with_name("chronos")
    lines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="chronos-soak-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "chronos.db"
        http_port, api_port = free_port(), free_port()
        env = dict(os.environ, CHRONOS_DATABASE_URL=f"sqlite:///{db}", CHRONOS_HTTP_ALLOW_HOSTS="127.0.0.1",
                   CHRONOS_CONCURRENCY=str(args.concurrency), CHRONOS_HISTORY_MAX_RUNS=str(args.max_runs),
                   CHRONOS_HISTORY_MAX_AGE=str(args.max_age),
                   CHRONOS_PRUNE_INTERVAL=str(args.prune_interval), CHRONOS_LOG_LEVEL="warning")
        with service_process([sys.executable, "-m", "bench.real_jobs", "--http-server", str(http_port)],
                             dict(os.environ), tmp / "http.log"), \
                service_process([str(exe), "serve", "--host", "127.0.0.1", "--port", str(api_port)], env,
                                tmp / "serve.log") as serve:
            api = f"http://127.0.0.1:{api_port}"
            wait_http(f"{api}/jobs/health", 60)
            base = datetime.fromtimestamp(math.ceil(time.time()) + 2, UTC)
            post_json(f"{api}/jobs/apply", {"jobs": job_specs("http", args.n, base, http_port)})
            began = time.time()
            last, cpu_last = began, proc_cpu(serve.pid)[0]
            while time.time() - began < args.minutes * 60:
                time.sleep(max(0.0, last + args.every - time.time()))
                now = time.time()
                cpu = proc_cpu(serve.pid)[0]
                line: dict[str, Any] = {
                    "bench": "soak", "minute": round((now - began) / 60, 2), "jobs_per_s": args.n,
                    "rss_mb": round(_rss_mb(serve.pid), 1), "db_mb": round(_size_mb(db), 1),
                    "cpu_pct": round(100 * (cpu - cpu_last) / (now - last), 1),
                    # slots of the interval before the last second (whose runs may not have started yet)
                    **_interval(db, last - 1.0, now - 1.0)}
                if not lines:
                    line["machine"] = machine()
                    line["retention"] = {"max_runs": args.max_runs, "max_age_s": args.max_age,
                                         "prune_interval_s": args.prune_interval}
                lines.append(line)
                print(json.dumps(line), flush=True)
                last, cpu_last = now, cpu
    out = args.out or Path(__file__).resolve().parent / "results" / "soak.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    if len(lines) >= 2:
        a, b = lines[1] if len(lines) > 2 else lines[0], lines[-1]
        print(f"from minute {a['minute']} to {b['minute']}: RSS {a['rss_mb']} -> {b['rss_mb']} MB, "
              f"SQLite {a['db_mb']} -> {b['db_mb']} MB, stored runs {a['stored_runs']} -> "
              f"{b['stored_runs']} (retention keeps {args.max_runs} per job: {args.max_runs * args.n})")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
