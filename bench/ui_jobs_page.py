"""The dashboard's jobs page with 10,000 stored jobs: how long until its first page is on screen.

    .venv/bin/python -m bench.ui_jobs_page [--jobs 10000] [--runs 100000] [--loads 10]

A SQLite file gets ``--jobs`` jobs and ``--runs`` finished runs over the last day (written as the engines
write them, see bench/views_bench.py), then a real ``chronos serve`` serves it and headless Chromium
(Debian's /usr/bin/chromium) opens ``/ui/#/jobs`` ``--loads`` times, each in a fresh browser context: the
time is from the start of the navigation to the moment the table shows its 50 rows, and then their
outcome strips (the digests read), measured by the page's own clock (a fresh context: nothing
cached). Then the next page, a
filter, and the two API reads behind the page. The table gives the median and the slowest, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.views_bench import fill
from chronos_adapters.sql import SqlStore
from chronos_core import Job, JobStatus, MisfirePolicy, OverlapPolicy, RetryPolicy
from chronos_core.ids import new_id

DASH = "\u2013"  # the en dash of the pager (rows 51 to 100)
ROWS = "document.querySelectorAll('tr[data-job]').length === 50"
STRIPS = "document.querySelectorAll('tr[data-job] .strip a').length > 0"


def make_jobs(n: int, now: datetime) -> list[Job]:
    """Jobs that do not fire while the benchmark runs (03:00 daily, the next slot tomorrow)."""
    later = (now + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    types = ["shell", "http", "sql"]
    payloads = {"shell": {"command": "true"}, "http": {"url": "https://example.com/"},
                "sql": {"connection": "main", "statement": "select 1"}}
    return [Job(id=new_id(), name=f"job-{i:05d}", type=types[i % 3], payload=payloads[types[i % 3]],
                schedule="0 3 * * *", timezone="Europe/Berlin", retry=RetryPolicy(), timeout=None,
                overlap=OverlapPolicy.ALLOW, misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=5.0,
                status=JobStatus.ACTIVE if i % 10 else JobStatus.PAUSED, created_at=now - timedelta(days=2),
                updated_at=now - timedelta(days=2), next_run_at=later) for i in range(n)]


async def prepare(path: Path, n_jobs: int, n_runs: int) -> None:
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:
        now = datetime.now(UTC)
        jobs = make_jobs(n_jobs, now)
        await store.add_jobs(jobs)
        # the runs go to the first jobs (the first page has full strips), the rest have none
        await fill(store, jobs[:max(1, n_runs // 20)], n_runs, now)
    finally:
        await store.stop()


def serve(path: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
    env.update(CHRONOS_DATABASE_URL=f"sqlite:///{path}", CHRONOS_LOG_LEVEL="warning")
    proc = subprocess.Popen([sys.executable, "-m", "chronos_app.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("chronos serve did not start")


def summary(name: str, took: list[float]) -> str:
    return f"| {name} | {statistics.median(took):.0f} | {max(took):.0f} |"


def measure(url: str, loads: int) -> list[str]:
    from playwright.sync_api import sync_playwright

    lines = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        rows: list[float] = []
        first: list[float] = []
        nxt: list[float] = []
        filtered: list[float] = []
        for i in range(loads + 1):
            context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=url)
            page = context.new_page()
            page.goto("/ui/#/jobs")
            page.wait_for_function(ROWS, polling="raf", timeout=60_000)
            rows_at = page.evaluate("performance.now()")
            page.wait_for_function(f"{ROWS} && {STRIPS}", polling="raf", timeout=60_000)
            shown = page.evaluate("performance.now()")
            if i:  # the first load warms the server (SQLite page cache, Python imports)
                rows.append(rows_at)
                first.append(shown)
            t0 = page.evaluate("performance.now()")
            page.get_by_role("button", name="Next →").click()
            page.wait_for_function("document.querySelector('[data-testid=range]').textContent"
                                   f".startsWith('51{DASH}100')", polling="raf")
            nxt.append(page.evaluate("performance.now()") - t0)
            t0 = page.evaluate("performance.now()")
            page.get_by_label("Last run").select_option("failed,timed_out")
            page.wait_for_function("document.querySelector('[data-testid=range]').textContent"
                                   f".startsWith('1{DASH}')", polling="raf")
            filtered.append(page.evaluate("performance.now()") - t0)
            context.close()
        browser.close()
    lines.append(summary("first page's 50 rows on screen (from the start of the navigation)", rows))
    lines.append(summary("... with their outcome strips and schedules in words", first))
    lines.append(summary(f"next page (click → rows 51{DASH}100)", nxt))
    lines.append(summary("filter last run = failed (select → rows)", filtered))
    with httpx.Client(base_url=url, timeout=30) as c:
        ids = ",".join(j["id"] for j in c.get("/jobs?limit=50").json()["items"])
        for name, path in (("GET /jobs?limit=50", "/jobs?limit=50"),
                           ("GET /job-digests (50 jobs)", f"/job-digests?ids={ids}"),
                           ("GET /stats", "/stats")):
            took = []
            for _ in range(20):
                t = time.perf_counter()
                c.get(path).raise_for_status()
                took.append((time.perf_counter() - t) * 1000)
            lines.append(summary(name, took))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "chronos.db"
        t = time.perf_counter()
        asyncio.run(prepare(db, args.jobs, args.runs))
        print(f"stored {args.jobs} jobs and {args.runs} runs in {time.perf_counter() - t:.0f}s")
        proc, url = serve(db)
        try:
            lines = measure(url, args.loads)
        finally:
            proc.terminate()
            proc.wait(30)
    load = os.getloadavg()[0]
    print(f"\n{args.jobs} jobs, {args.runs} runs (SQLite), {args.loads} loads, load average {load:.1f} "
          f"on {os.cpu_count()} cores\n")
    print("| what | median ms | slowest ms |\n| --- | ---: | ---: |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
