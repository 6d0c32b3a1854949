"""Where ``chronos serve``'s CPU per request goes, thread by thread, for several source trees in turn
(``python -m bench.api_threads --trees main=/work/main branch=. [--rounds 4] [--path /jobs?limit=100]
[--spy out-prefix]``).

Each tree's ``chronos serve`` runs on one SQLite file seeded as ``bench.api`` seeds it (1,000 jobs; kept
at ``--db`` between invocations), all of them at once; ``wrk -t1 -c16`` loads them one after the other,
the order reversed every round. Per load: requests/s, p50/p99 and the CPU each thread used per request,
from ``/proc/<pid>/task/*/stat``. CPython 3.11 does not name OS threads, so the servers get
``api_threads_site/sitecustomize.py`` on their path: it sets each OS thread's name to its Python name
and numbers thread pools (``chronos-sql1`` is the engines' store's pool, ``chronos-sql2`` the API
sibling's, ``chronos-api`` the API's loop thread, ``chronos`` the main thread). ``--spy PREFIX``: py-spy
records the last round (``--spy-args=--gil`` for GIL-holding samples only) into ``PREFIX-<tree>.txt``
(raw collapsed stacks). Lines go to ``--out`` as JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import api as B

HERE = Path(__file__).resolve().parent
TCK = os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (name, CPU seconds) of every thread of ``pid``."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            s = (t / "stat").read_text()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        f = s.rpartition(")")[2].split()
        out[int(t.name)] = (name, (int(f[11]) + int(f[12])) / TCK)
    return out


def by_name(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds used between the two, per thread name (a pool's threads together)."""
    used: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        group = re.sub(r"_\d+$", "", name)
        used[group] = used.get(group, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    return used


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.api_threads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", nargs="+", required=True, help="LABEL=PATH (or PATH) of each source tree")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6)
    p.add_argument("--path", default="/jobs?limit=100", help="{id}: the first listed job's id")
    p.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "chronos-api-threads.db")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for every server")
    p.add_argument("--tree-env", action="append", default=[], metavar="LABEL:NAME=VALUE",
                   help="for one tree's server (the same path twice under two labels: an A/B of a setting)")
    p.add_argument("--spy", help="py-spy record the last round into PREFIX-<label>.txt")
    p.add_argument("--spy-args", default="--gil")
    p.add_argument("--out", type=Path, default=HERE / "results" / "api-threads.jsonl")
    a = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install wrk)")
    if not a.db.exists():
        asyncio.run(B.seed(f"sqlite:///{a.db}", 1000, 5, 5, 150))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    spy_exe = Path(sys.executable).with_name("py-spy")
    servers: list[tuple[str, int, Any]] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="chronos-api-threads-") as t:
        tmp = Path(t)
        for i, tree in enumerate(a.trees):
            label, _, path = tree.rpartition("=") if "=" in tree else (tree, "", tree)
            own = [kv.split(":", 1)[1] for kv in a.tree_env if kv.split(":", 1)[0] == label]
            env = B.chronos_env(a.db, **dict(kv.split("=", 1) for kv in [*a.env, *own]))
            env["PYTHONPATH"] = f"{HERE / 'api_threads_site'}{os.pathsep}{Path(path).resolve()}"
            port = B.free_port()
            B.ROOT = Path(path).resolve()  # the server's working directory
            proc = stack.enter_context(B.server(B.chronos_cmd(port), port, env, tmp / f"serve-{i}.log"))
            servers.append((label, port, proc))
        path = a.path
        if "{id}" in path:
            first = json.loads(B._get(servers[0][1], "/jobs?limit=1")[1])["items"][0]["id"]
            path = path.replace("{id}", first)
        for _, port, _ in servers:  # warm up: the caches fill
            subprocess.run(["wrk", "-t1", "-c16", "-d2s", f"http://127.0.0.1:{port}{path}"],
                           capture_output=True, check=False)
        results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in servers}
        for r in range(a.rounds):
            for label, port, proc in (servers if r % 2 == 0 else servers[::-1]):
                spy = None
                if a.spy and r == a.rounds - 1:
                    spy = subprocess.Popen([str(spy_exe), "record", "-p", str(proc.pid), "-r", "200", "-d",
                                            str(int(a.duration)), "-f", "raw", "-o", f"{a.spy}-{label}.txt",
                                            *a.spy_args.split()],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                t0, l0 = threads(proc.pid), os.getloadavg()[0]
                load = B.wrk(port, path, a.duration, 16, None, tmp)
                t1, l1 = threads(proc.pid), os.getloadavg()[0]
                if spy is not None:
                    spy.wait()
                used = by_name(t0, t1)
                n = max(1, load.requests)
                line = {"tree": label, "round": r, "path": a.path, "rps": load.rps, "p50_ms": load.p50_ms,
                        "p99_ms": load.p99_ms, "bad": load.bad,
                        "cpu_us_req": round(sum(used.values()) * 1e6 / n),
                        "threads_us_req": {k: round(v * 1e6 / n) for k, v in sorted(used.items()) if v > 0},
                        "loadavg_1m": [round(l0, 2), round(l1, 2)], "spied": spy is not None}
                results[label].append(line)
                print(json.dumps(line), flush=True)
                with a.out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
    for label, lines in results.items():
        rps = [x["rps"] for x in lines]
        cpu = [x["cpu_us_req"] for x in lines]
        print(f"{label}: {statistics.median(rps):.0f}/s ({min(rps):.0f}-{max(rps):.0f}), CPU/request "
              f"{statistics.median(cpu):.0f} µs ({min(cpu)}-{max(cpu)})")


if __name__ == "__main__":
    main()
