"""Chronos and APScheduler 3.11 side by side: ``python -m bench.run [--quick]`` (``make bench`` /
``make bench-quick``).

Every case runs in a fresh process (``python -m bench.run --one '<case json>'``) and reports one JSON
line; this driver prints each line as it comes (``{"system": ..., "store": ..., "kind": ..., "n": ...}``),
then a table, the ratios of the two systems in words, and draws the chart (``--chart``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULT_PREFIX, Case, case_from_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STORES = ("memory", "sqlite", "mariadb")
KINDS = ("interval", "cron")


def plan(args: argparse.Namespace) -> list[Case]:
    """The cases to run, in order: per store and N, both systems next to each other."""
    sizes = args.n or ([100, 1000] if args.quick else [100, 1000, 10_000])
    big = [] if args.quick else [100_000]
    cases: list[Case] = []
    for store in args.stores:
        for n in sizes:
            if args.quick and store != "memory" and n < 1000:
                continue  # quick: the SQL stores at 1k only
            for kind in args.kinds:
                for system in args.systems:
                    cases.append(Case(system, store, kind, n, duration=args.duration, warmup=args.warmup,
                                      mysql_url=args.mysql_url))
        if "chronos" in args.systems and not args.n:
            for stored in big:  # 100k stored jobs, of which 1k come due every second
                for kind in args.kinds:
                    cases.append(Case("chronos", store, kind, 1000, stored=stored, duration=args.duration,
                                      warmup=args.warmup, mysql_url=args.mysql_url))
    return cases


def unavailable(case: Case, mysql_ok: bool) -> str | None:
    if case.store == "mariadb" and not mysql_ok:
        return "MariaDB not reachable"
    if (case.system == "chronos" and case.store != "memory"
            and importlib.util.find_spec("chronos_adapters.sql") is None):
        return "chronos_adapters.sql (SqlStore) not available yet"
    return None


def mysql_reachable(url: str) -> bool:
    try:
        import pymysql
        from sqlalchemy.engine import make_url

        u = make_url(url)
        pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                        password=u.password or "", connect_timeout=3).close()
        return True
    except Exception:
        return False


def run_one(case: Case, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.run", "--one", json.dumps(dataclasses.asdict(case))]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
                              env=env)
    except subprocess.TimeoutExpired:
        return _failed(case, f"timed out after {timeout:g}s")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return _failed(case, f"exit {proc.returncode}: {tail}")


def _failed(case: Case, why: str) -> dict[str, Any]:
    return {"system": case.system, "store": case.store, "kind": case.kind, "n": case.n,
            "stored": case.stored, "error": why}


# ------------------------------------------------------------------------------------------ report

COLUMNS = [
    ("system", "system", "{}"), ("store", "store", "{}"), ("kind", "kind", "{}"), ("N", "n", "{}"),
    ("stored", "stored", "{}"), ("on-time/s", "on_time_per_s", "{:g}"), ("on-time %", "on_time_pct", "{:g}"),
    ("missed", "missed", "{}"), ("skipped", "skipped", "{}"), ("not run", "not_run", "{}"),
    ("p50 ms", "lag_p50_ms", "{:g}"), ("p99 ms", "lag_p99_ms", "{:g}"), ("max ms", "lag_max_ms", "{:g}"),
    ("CPU µs/run", "cpu_us_per_run", "{:g}"), ("DB µs/run", "db_cpu_us_per_run", "{:g}"),
    ("CPU %", "cpu_pct", "{:g}"), ("RSS MB", "peak_rss_mb", "{:g}"), ("create s", "create_s", "{:g}"),
    ("create CPU s", "create_cpu_s", "{:g}"), ("history", "recorded", "{}"),
]


def _cell(r: dict[str, Any], key: str, fmt: str) -> str:
    v = r.get(key)
    if key == "recorded" and r.get("system") == "apscheduler":
        return "none kept"
    return "—" if v is None else fmt.format(v)


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = [head, sep]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['system']} | {r['store']} | {r['kind']} | {r['n']} | {r['stored']} | "
                        f"{r['error']} |" + " |" * (len(COLUMNS) - 6))
        else:
            rows.append("| " + " | ".join(_cell(r, k, f) for _, k, f in COLUMNS) + " |")
    return "\n".join(rows)


def _ratio(a: float | None, b: float | None, better: str, worse: str) -> str:
    """How Chronos's ``a`` compares with APScheduler's ``b`` when lower is better."""
    if a is None or b is None or a <= 0 or b <= 0:
        return "no ratio"
    return f"{b / a:.1f}x {better}" if b >= a else f"{a / b:.1f}x {worse}"


def ratios(results: list[dict[str, Any]]) -> list[str]:
    """One sentence per (store, kind, N) that both systems ran."""
    by = {(r["system"], r["store"], r["kind"], r["n"], r["stored"]): r for r in results if "error" not in r}
    lines = []
    for (system, store, kind, n, stored), c in by.items():
        if system != "chronos" or stored != n:
            continue
        a = by.get(("apscheduler", store, kind, n, n))
        if a is None:
            continue
        lines.append(
            f"{store} {kind} N={n}: Chronos ran {c['on_time_pct']}% of slots on time vs APScheduler "
            f"{a['on_time_pct']}%; p99 lag {c['lag_p99_ms']} ms vs {a['lag_p99_ms']} ms "
            f"({_ratio(c['lag_p99_ms'], a['lag_p99_ms'], 'lower', 'higher')}); CPU/run "
            f"{c['cpu_us_per_run']} µs vs {a['cpu_us_per_run']} µs "
            f"({_ratio(c['cpu_us_per_run'], a['cpu_us_per_run'], 'less', 'more')}, Chronos recording every "
            f"run in history, APScheduler none); creating {n} jobs {c['create_s']} s vs {a['create_s']} s "
            f"({_ratio(c['create_s'], a['create_s'], 'faster', 'slower')})."
        )
    for (system, store, kind, n, stored), big in by.items():
        small = by.get((system, store, kind, n, n))
        if stored == n or small is None:
            continue
        lines.append(
            f"{store} {kind}, {n} due per second among {stored} stored jobs: p99 lag {big['lag_p99_ms']} ms "
            f"and {big['cpu_us_per_run']} µs CPU/run, against {small['lag_p99_ms']} ms and "
            f"{small['cpu_us_per_run']} µs with only the {n} due jobs stored; creating {stored} jobs "
            f"took {big['create_s']} s."
        )
    return lines


def chart(results: list[dict[str, Any]], path: Path) -> Path | None:
    """p99 fire lag and CPU per run against N, both systems, one line per store and schedule kind."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
        return None
    ok = [r for r in results if "error" not in r and r["stored"] == r["n"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = {"chronos": "-", "apscheduler": "--"}
    markers = {"memory": "o", "sqlite": "s", "mariadb": "^"}
    colors = {("chronos", "interval"): "tab:blue", ("chronos", "cron"): "tab:cyan",
              ("apscheduler", "interval"): "tab:red", ("apscheduler", "cron"): "tab:orange"}
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in ok:
        series.setdefault((r["system"], r["store"], r["kind"]), []).append(r)
    for ax, key, title in ((axes[0], "lag_p99_ms", "p99 fire lag (ms)"),
                           (axes[1], "cpu_us_per_run", "CPU per run (µs)")):
        for (system, store, kind), rows in sorted(series.items()):
            rows = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r["n"])
            if not rows:
                continue
            ax.plot([r["n"] for r in rows], [max(r[key], 0.01) for r in rows], styles[system],
                    marker=markers.get(store, "x"), color=colors[(system, kind)],
                    label=f"{system} {store} {kind}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("jobs firing every second (N)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Chronos (solid) vs APScheduler 3.11 (dashed): lower is better")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer and shorter cases (under 3 minutes)")
    p.add_argument("--systems", nargs="+", default=["chronos", "apscheduler"])
    p.add_argument("--stores", nargs="+", default=list(STORES), choices=STORES)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--n", nargs="+", type=int, help="jobs firing every second (default 100 1000 10000)")
    p.add_argument("--duration", type=float, help="measured seconds per case (default 10, quick 3)")
    p.add_argument("--warmup", type=float, help="seconds before the window (default 3, quick 1)")
    p.add_argument("--mysql-url", default=os.environ.get("CHRONOS_BENCH_MYSQL_URL",
                                                         "mysql+pymysql://root@127.0.0.1:3306"))
    p.add_argument("--out", type=Path, help="results file, JSON lines (default bench/latest.jsonl; "
                                             "quick: bench/results/quick.jsonl)")
    p.add_argument("--chart", type=Path, help="chart PNG (default bench/chart.png; quick: "
                                              "bench/results/quick.png)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per case before it is killed")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        case = case_from_json(args.one)
        if case.system == "chronos":
            from bench import chronos_case

            chronos_case.main(case)
        else:
            from bench import aps_case

            aps_case.main(case)
        return 0
    args.duration = float(round(args.duration or (3.0 if args.quick else 10.0)))  # whole seconds
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    mode = "quick" if args.quick else "full"
    # a full run's results and chart are kept in the repository (BENCHMARKS.md shows them)
    out = args.out or (HERE / "latest.jsonl" if mode == "full" else RESULTS / "quick.jsonl")
    mysql_ok = "mariadb" in args.stores and mysql_reachable(args.mysql_url)
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    for case in plan(args):
        why = unavailable(case, mysql_ok)
        result = _failed(case, f"skipped: {why}") if why else run_one(case, args.timeout)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{len(results)} cases in {time.monotonic() - began:.0f} s "
          f"(window {args.duration:g} s each after {args.warmup:g} s warm-up)\n")
    print(table(results))
    print()
    for line in ratios(results):
        print("- " + line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in results))
    png = chart(results, args.chart or (HERE / "chart.png" if mode == "full" else RESULTS / "quick.png"))
    print(f"\nresults: {out}" + (f"; chart: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
