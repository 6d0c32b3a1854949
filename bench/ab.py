"""Interleaved A/B of Chronos ``bench.run`` cases between this tree and another checkout:
``python -m bench.ab /path/to/other/checkout [--reps 2] [--out ab.jsonl]``.

Each case runs in a fresh process (``bench.run --one``) with ``PYTHONPATH`` and the working directory set
to the tree under test, so the engine code is that tree's; the order of the two trees alternates per
repetition, so a neighbour's load or a drifting machine falls on both. One JSON line per run (tree,
repetition, load average before the run, the case's figures). Used for the issue 17 before/after table in
BENCHMARKS.md (the other tree was a ``git worktree add`` of the commit before the redesign).

``python -m bench.ab --drivers pymysql asyncmy [--cases mariadb:interval:1000 ...]``: the same
interleaving between two MySQL drivers of this tree (the MariaDB cases, ``--mysql-url`` with each
driver in turn) instead of two trees.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
CASES = [("memory", "interval", 1000), ("memory", "cron", 1000), ("memory", "interval", 10000),
         ("memory", "cron", 10000), ("sqlite", "interval", 1000), ("sqlite", "cron", 1000),
         ("sqlite", "interval", 10000), ("mariadb", "interval", 1000), ("mariadb", "cron", 1000),
         ("mariadb", "interval", 10000)]
KEYS = ("on_time_pct", "lag_p50_ms", "lag_p99_ms", "cpu_us_per_run", "db_cpu_us_per_run", "cpu_pct",
        "peak_rss_mb", "create_s")


def run_case(tree: Path, store: str, kind: str, n: int, mysql_url: str, timeout: float) -> dict:
    case = {"system": "chronos", "store": store, "kind": kind, "n": n, "stored": n, "duration": 10.0,
            "warmup": 3.0, "mysql_url": mysql_url}
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--one", json.dumps(case)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            result = json.loads(line[len("BENCH-RESULT "):])
            return {k: result.get(k) for k in KEYS}
    return {"error": proc.stderr[-500:], "rc": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("other", type=Path, nargs="?",
                   help="the other checkout (e.g. a git worktree of the commit before)")
    p.add_argument("--drivers", nargs=2, metavar=("A", "B"),
                   help="compare two MySQL drivers of this tree instead (e.g. pymysql asyncmy)")
    p.add_argument("--cases", nargs="+", metavar="STORE:KIND:N", help="only these cases")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "bench" / "results" / "ab.jsonl")
    p.add_argument("--mysql-url", default=os.environ.get("CHRONOS_BENCH_MYSQL_URL",
                                                         "mysql+pymysql://root@127.0.0.1:3306"))
    p.add_argument("--timeout", type=float, default=400.0)
    args = p.parse_args(argv)
    cases = [(c.split(":")[0], c.split(":")[1], int(c.split(":")[2])) for c in args.cases] \
        if args.cases else CASES
    if args.drivers:
        from sqlalchemy.engine import make_url
        base = make_url(args.mysql_url)
        trees = {d: HERE for d in args.drivers}
        urls = {d: base.set(drivername=f"mysql+{d}").render_as_string(hide_password=False)
                for d in args.drivers}
        cases = [c for c in cases if c[0] == "mariadb"]
    elif args.other is None:
        p.error("name the other checkout, or --drivers")
    else:
        trees = {"this": HERE, "other": args.other.resolve()}
        urls = {name: args.mysql_url for name in trees}
    first, second = trees
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for rep in range(args.reps):
            for store, kind, n in cases:
                for name in ((first, second) if rep % 2 == 0 else (second, first)):
                    row = {"tree": name, "path": str(trees[name]), "rep": rep, "store": store, "kind": kind,
                           "n": n, "load1": os.getloadavg()[0], "t": time.strftime("%H:%M:%S")}
                    row.update(run_case(trees[name], store, kind, n, urls[name], args.timeout))
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
