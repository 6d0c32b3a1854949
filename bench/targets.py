"""Issue 18's six targets, one line each, from the result files the other benches wrote:
``python -m bench.targets`` (the last step of ``make bench``).

It runs nothing itself: it reads ``bench/api-latest.jsonl`` (``bench.api``), ``bench/results/burst.jsonl``
(``bench.burst``), ``bench/results/real_jobs.jsonl`` (``bench.real_jobs``), ``bench/latest.jsonl``
(``bench.run``) and ``bench/results/scale_out.jsonl`` (``bench.scale_out``) when present, and says for each
target what was measured (median, min-max), against what, and whether it is met. A target is met only when
every repetition meets it ("a target met once is not met"); a file that is missing is named, not guessed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _load(path: Path) -> list[dict[str, Any]]:
    """JSON lines, or a bench's whole output where its result lines carry ``RESULT_PREFIX``."""
    from bench.common import RESULT_PREFIX

    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.removeprefix(RESULT_PREFIX).strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    return f"{med:g} ({min(values):g}-{max(values):g})" if len(values) > 1 else f"{med:g}"


def _verdict(values: list[float], ok: Any) -> str:
    if not values:
        return "not measured"
    if all(ok(v) for v in values):
        return "met"
    return "met at the median only" if ok(statistics.median(values)) else "NOT met"


def api_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Target 1 and the API half of target 6."""
    from bench.api import POST_TARGET, TARGETS

    out = []
    for case in ("GET /jobs?limit=100", "GET /jobs/{id}/history?limit=100"):
        ratios = [r["ratio"] for r in rows if r.get("case") == case and r.get("system") == "chronos"]
        target = TARGETS[case]
        out.append(f"1 API {case}: ratio to bare Starlette {_spread(ratios)} (target ≥ {target:g}: "
                   f"{_verdict(ratios, lambda v, t=target: v >= t)})")
    posts = [r["rps"] for r in rows if r.get("case") == "POST /jobs" and r.get("system") == "chronos"]
    out.append(f"1 API POST /jobs: {_spread(posts)} requests/s (target ≥ {POST_TARGET:g}/s: "
               f"{_verdict(posts, lambda v: v >= POST_TARGET)})")
    sse = [r for r in rows if str(r.get("case", "")).startswith("SSE")]
    if sse:
        every = [float(r["clients_with_every_event"] == r["clients"]) for r in sse]
        p99 = [r["delay_p99_ms"] for r in sse if r.get("delay_p99_ms") is not None]
        ok = all(every) and p99 and all(v <= 100 for v in p99)
        out.append(f"1 SSE {sse[0]['clients']} clients: every client got every event in {int(sum(every))}/"
                   f"{len(sse)} runs, delivery p99 {_spread(p99)} ms (target ≤ 100 ms: "
                   f"{'met' if ok else 'NOT met'})")
    else:
        out.append("1 SSE: not measured (bench.api --sse)")
    sched = {r["case"]: r for r in rows if str(r.get("case", "")).startswith("scheduler")}
    for case, r in sched.items():
        api = f", API {r['api_rps']}/s p99 {r['api_p99_ms']} ms" if r.get("api_rps") is not None else ""
        out.append(f"6 {case}: {r['on_time_pct']} % of {r['rate']} jobs/s on time, {r['missed']} missed{api}")
    return out


def burst_lines(rows: list[dict[str, Any]]) -> list[str]:
    from bench.burst import ratios

    return ["2 " + line for line in ratios(rows)] or ["2 bursts: not measured (bench.burst)"]


def durable_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Target 3: 10,000 jobs at 1/s on the SQL stores, ≥ 99.9 % on time, p99 ≤ 100 ms."""
    out = []
    for store in ("sqlite", "mariadb"):
        for kind in ("interval", "cron"):
            rs = [r for r in rows if r.get("system") == "chronos" and r.get("store") == store
                  and r.get("kind") == kind and r.get("n") == 10_000 and r.get("stored", 10_000) == 10_000
                  and "error" not in r]
            pct = [r["on_time_pct"] for r in rs if r.get("on_time_pct") is not None]
            p99 = [r["lag_p99_ms"] for r in rs if r.get("lag_p99_ms") is not None]
            cpu = [r["cpu_us_per_run"] for r in rs if r.get("cpu_us_per_run")]
            both = [float(a >= 99.9 and b <= 100) for a, b in zip(pct, p99, strict=False)]
            ok = _verdict(both, lambda v: v == 1.0)
            out.append(f"3 durable {store} {kind} 10k/s: {_spread(pct)} % on time, p99 {_spread(p99)} ms, "
                       f"CPU/run {_spread(cpu)} µs (target ≥ 99.9 % and p99 ≤ 100 ms: {ok})")
    return out


def real_lines(rows: list[dict[str, Any]]) -> list[str]:
    from bench.real_jobs import report

    return ["4 " + line[2:] for line in report(rows) if line.startswith("- ")] if rows else \
        ["4 real job types: not measured (bench.real_jobs)"]


def scale_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Target 5: start lag p99 ≤ 100 ms at 500 runs/s with 2 schedulers and 2 workers, ≤ 0.6 ms CPU per
    run across every process, and a second scheduler not lowering throughput. Judged over every
    repetition of the target configuration (N=500, S=2, W=2, interval); rows of a ``label``ed A/B run
    are left out unless they say ``"label": "target"`` or carry none."""
    if not rows:
        return ["5 scale-out: not measured (save bench.scale_out's output to bench/results/scale_out.jsonl)"]
    ok = [r for r in rows if "error" not in r and "lag_p99_ms" in r
          and r.get("kind", "interval") == "interval" and r.get("label") in (None, "target")]

    def config(n: int, s: int, w: int) -> list[dict[str, Any]]:
        return [r for r in ok if r["n"] == n and r["schedulers"] == s and r["workers"] == w]

    target = config(500, 2, 2)
    if not target:
        return ["5 scale-out: no run of N=500, 2 schedulers, 2 workers in the result file"]
    lag = [r["lag_p99_ms"] for r in target]
    cpu = [r["cpu_ms_per_run_total"] for r in target]
    rate = [r["throughput_per_s"] for r in target]
    load = [r["loadavg_before"][0] for r in target if r.get("loadavg_before")]
    out = [f"5 scale-out N=500 S=2 W=2 ({len(target)} runs, load {_spread(load)}): {_spread(rate)} runs/s, "
           f"start lag p99 {_spread(lag)} ms (target ≤ 100: {_verdict(lag, lambda v: v <= 100)}), "
           f"CPU per run in every process {_spread(cpu)} ms (target ≤ 0.6: "
           f"{_verdict(cpu, lambda v: v <= 0.6)})"]
    one = config(500, 1, 2)
    if one:
        r1 = statistics.median(r["throughput_per_s"] for r in one)
        r2 = statistics.median(rate)
        out.append(f"5 scale-out second scheduler at N=500 W=2: {r1:g} runs/s with 1, {r2:g} with 2 "
                   f"(target: not lower, within 2 %: {'met' if r2 >= 0.98 * r1 else 'NOT met'})")
    else:
        out.append("5 scale-out second scheduler: not measured (run N=500 W=2 with --schedulers 1 too)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", type=Path, default=HERE / "api-latest.jsonl")
    p.add_argument("--burst", type=Path, default=HERE / "results" / "burst.jsonl")
    p.add_argument("--run", type=Path, default=HERE / "latest.jsonl")
    p.add_argument("--real-jobs", type=Path, default=HERE / "results" / "real_jobs.jsonl")
    p.add_argument("--scale-out", type=Path, default=HERE / "results" / "scale_out.jsonl")
    args = p.parse_args(argv)
    lines = (api_lines(_load(args.api)) + burst_lines(_load(args.burst)) + durable_lines(_load(args.run))
             + real_lines(_load(args.real_jobs)) + scale_lines(_load(args.scale_out)))
    print("Issue 18 targets (target number, what, measured, verdict):")
    for line in lines:
        print("- " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
