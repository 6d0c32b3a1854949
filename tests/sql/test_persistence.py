"""A job made through ``Chronos.embedded(database_url=...)`` in one OS process is still there, with its
runs, in the next process; scheduling resumes by the job's misfire policy (here ``skip`` with a 1 s
grace: the slots of the downtime are recorded missed with the reason, none runs late)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODES = Path(__file__).with_name("nodes.py")


async def node(mode: str, url: str) -> dict:  # type: ignore[type-arg]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(NODES), mode, url, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chronos.db'}"  # an empty file: the first start creates the schema
    return str(request.getfixturevalue("fresh_mysql_url"))


async def test_jobs_and_runs_survive_the_process_and_scheduling_resumes(database_url: str) -> None:
    first = await node("create", database_url)
    await asyncio.sleep(3)  # nothing runs the job meanwhile
    second = await node("resume", database_url)

    assert second["job_id"] == first["job_id"]
    before = {r["id"]: r for r in first["runs"]}
    after = {r["id"]: r for r in second["runs"]}
    finished_before = {i for i, r in before.items() if r["status"] == "succeeded"}
    assert len(finished_before) >= 2
    assert finished_before <= set(after)  # the first process's history is still there
    assert all(after[i]["output"] == "persisted" for i in finished_before)

    slots = Counter(datetime.fromisoformat(r["slot"]) for r in after.values() if r["attempt"] == 1)
    assert max(slots.values()) == 1
    lo, hi = min(slots), max(slots)
    # every second from the first slot to the last is accounted for: it ran or it is recorded
    assert set(slots) == {lo + timedelta(seconds=i) for i in range(int((hi - lo).total_seconds()) + 1)}
    restart = datetime.fromisoformat(second["started"])
    missed = [r for r in after.values() if r["status"] == "missed"]
    assert missed, "the downtime's slots are recorded"
    assert all("misfire policy skip" in (r["error"] or "") for r in missed)
    assert any(datetime.fromisoformat(r["slot"]) < restart for r in missed)  # the downtime
    resumed = [r for r in after.values() if r["status"] == "succeeded"
               and datetime.fromisoformat(r["slot"]) >= restart]
    assert len(resumed) >= 2
