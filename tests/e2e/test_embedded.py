"""The embedding API end to end, with the real clock and real processes."""

from __future__ import annotations

import asyncio

from chronos_app import Chronos
from chronos_core import EventType, RunStatus


async def test_per_second_shell_job_runs_on_whole_distinct_seconds() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({"name": "hello", "type": "shell",
                                         "schedule": "*/1 * * * * *",
                                         "payload": {"command": "echo hi"}})
        await asyncio.sleep(3.2)
        runs = await chronos.jobs.history(job.id)
    done = [r for r in runs if r.status is RunStatus.SUCCEEDED]
    assert len(done) >= 2, runs
    assert all("hi" in r.output for r in done)
    slots = [r.scheduled_for for r in done]
    assert len(set(slots)) == len(slots)
    assert all(s.microsecond == 0 for s in slots)
    # newest first
    assert slots == sorted(slots, reverse=True)


async def test_events_stream_live_log_lines_before_the_run_ends() -> None:
    async with Chronos.embedded() as chronos:
        job = await chronos.jobs.create({"name": "talker", "type": "shell",
                                         "payload": {"command": "echo one; sleep 0.5; echo two"}})
        seen: list[tuple[str, str | None]] = []
        async with chronos.events.subscribe(job_id=job.id) as sub:
            run = await chronos.jobs.trigger(job.id)
            async with asyncio.timeout(10):
                async for event in sub:
                    seen.append((event.type.value, event.data.get("line")))
                    if event.type is EventType.RUN_LOG and event.data["line"] == "one":
                        # the run is still going while its first line is already here
                        assert (await chronos.runs.get(run.id)).status is RunStatus.RUNNING
                    if event.type is EventType.RUN_SUCCEEDED:
                        break
    assert seen == [("run.queued", None), ("run.started", None), ("run.log", "one"),
                    ("run.log", "two"), ("run.succeeded", None)]
