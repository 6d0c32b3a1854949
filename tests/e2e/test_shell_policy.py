"""``allow_shell`` off means no shell command runs in this process, however the run got here: not only
are shell jobs refused when created or triggered, a shell run already queued in the store (by a process
where shell was on) fails at execution, not retried, without starting the command. Embedded and in the
service (the API's container)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chronos_app import Chronos
from chronos_core import Run, RunStatus, ShellNotAllowed
from tests.api.conftest import build_app, running


async def _queue_a_shell_run(url: str, marker: Path) -> tuple[str, str]:
    """A shell job and a queued run of it, left in the store by a process where shell was on (no
    engines: nothing takes the run)."""
    async with Chronos.embedded(url, allow_shell=True, scheduler=False, worker=False) as before:
        job = await before.jobs.create({"name": "touch", "type": "shell",
                                        "payload": {"command": f"touch {marker}"},
                                        "retry": {"max_attempts": 3, "strategy": "immediate"}})
        run = await before.jobs.trigger(job.id)
    return job.id, run.id


async def _ended(chronos: Chronos, run_id: str) -> Run:
    for _ in range(500):
        run = await chronos.runs.get(run_id)
        if run.finished:
            return run
        await asyncio.sleep(0.01)
    raise AssertionError("the run did not end")


async def test_embedded_with_shell_off_runs_no_queued_shell_run(tmp_path: Path) -> None:
    url, marker = f"sqlite:///{tmp_path}/chronos.db", tmp_path / "ran"
    job_id, run_id = await _queue_a_shell_run(url, marker)
    async with Chronos.embedded(url, allow_shell=False) as chronos:
        run = await _ended(chronos, run_id)
        with pytest.raises(ShellNotAllowed):
            await chronos.jobs.trigger(job_id)
        with pytest.raises(ShellNotAllowed):
            await chronos.jobs.create({"name": "other", "type": "shell", "payload": {"command": "true"}})
        await asyncio.sleep(0.2)
        history = await chronos.jobs.history(job_id)
    assert run.status is RunStatus.FAILED and "CHRONOS_ALLOW_SHELL" in (run.error or "")
    assert len(history) == 1  # not retried
    assert not marker.exists()


async def test_the_service_with_shell_off_runs_no_queued_shell_run(tmp_path: Path) -> None:
    url, marker = f"sqlite:///{tmp_path}/chronos.db", tmp_path / "ran"
    job_id, run_id = await _queue_a_shell_run(url, marker)
    async with running(build_app(database_url=url, allow_shell=False)) as c:
        for _ in range(500):
            run = (await c.get(f"/runs/{run_id}")).json()
            if run["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.01)
        refused = await c.post(f"/jobs/{job_id}/run")
    assert run["status"] == "failed" and "CHRONOS_ALLOW_SHELL" in run["error"]
    assert refused.status_code == 422 and "CHRONOS_ALLOW_SHELL" in refused.json()["errors"][0]["reason"]
    assert not marker.exists()
