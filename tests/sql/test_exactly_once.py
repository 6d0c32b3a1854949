"""Several schedulers sharing one MariaDB database fire every (job, slot) exactly once between them, and
no slot of the window goes unaccounted for: each one ran, or is recorded missed/skipped with a reason."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chronos_adapters.sql import SqlStore, migrate
from chronos_core import Job, JobStatus, MisfirePolicy, OverlapPolicy, RetryPolicy, RunStatus
from chronos_core.ids import new_id
from chronos_core.planning import next_slot

from .nodes import scheduler_node

pytestmark = pytest.mark.mysql

ROOT = Path(__file__).resolve().parents[2]
NODES = Path(__file__).with_name("nodes.py")


async def add_per_second_jobs(url: str, n: int) -> tuple[list[str], datetime]:
    migrate(url)
    now = datetime.now(UTC)
    store = SqlStore(url, create_schema=False)
    await store.start()
    try:
        made = []
        for i in range(n):
            job = Job(id=new_id(), name=f"tick-{i:02d}", type="noop", payload={}, schedule="*/1 * * * * *",
                      timezone="UTC", retry=RetryPolicy(), timeout=None, overlap=OverlapPolicy.ALLOW,
                      misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=5.0, status=JobStatus.ACTIVE,
                      created_at=now, updated_at=now)
            job.next_run_at = next_slot(job, now + timedelta(seconds=1))
            made.append(job)
        await store.add_jobs(made)
    finally:
        await store.stop()
    assert made[0].next_run_at is not None
    return [j.id for j in made], made[0].next_run_at


async def assert_each_slot_once(url: str, job_ids: list[str], first: datetime) -> int:
    """Every second from ``first`` up to the job's next_run_at has exactly one first attempt."""
    store = SqlStore(url, create_schema=False)
    await store.start()
    total = 0
    try:
        for job_id in job_ids:
            job = await store.get_job(job_id)
            assert job.next_run_at is not None
            runs = await store.list_runs(job_id, limit=100_000)
            firsts = Counter(r.scheduled_for for r in runs if r.attempt == 1)
            assert [slot for slot, n in firsts.items() if n > 1] == []
            span = int((job.next_run_at - first).total_seconds())
            assert span >= 3, "the schedulers made no progress"
            assert set(firsts) == {first + timedelta(seconds=i) for i in range(span)}
            for run in runs:
                if run.status in (RunStatus.MISSED, RunStatus.SKIPPED):
                    assert run.error, run
            assert any(r.status is RunStatus.SUCCEEDED for r in runs)
            total += len(firsts)
    finally:
        await store.stop()
    return total


async def test_three_schedulers_in_one_process_fire_each_slot_once(fresh_mysql_url: str) -> None:
    job_ids, first = await add_per_second_jobs(fresh_mysql_url, 20)
    # small batches, so that the schedulers' claims interleave within each second
    results = await asyncio.gather(*(scheduler_node(fresh_mysql_url, 10.0, 3) for _ in range(3)))
    slots = await assert_each_slot_once(fresh_mysql_url, job_ids, first)
    fired = sum(r["fired"] for r in results) + sum(r["recorded"] for r in results)
    assert fired == slots  # what the schedulers say they fired is what the database holds


async def test_two_scheduler_processes_fire_each_slot_once(fresh_mysql_url: str) -> None:
    job_ids, first = await add_per_second_jobs(fresh_mysql_url, 20)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, str(NODES), "scheduler", fresh_mysql_url, "8", "4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env) for _ in range(2)]
    outs = []
    async with asyncio.timeout(120):
        for proc in procs:
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()[-3000:]
            outs.append(json.loads(out.decode().strip().splitlines()[-1]))
    slots = await assert_each_slot_once(fresh_mysql_url, job_ids, first)
    assert sum(o["fired"] + o["recorded"] for o in outs) == slots
