"""End to end: SSE streams resumed with Last-Event-ID while the engines' loop publishes steadily get every
event after that id, with no gap (the API on its own thread, as chronos serve; the one-loop control).
Each stream is the only one of its filter, so its hand-over makes a new group (race review F1; written by
the reviewer)."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from chronos_core import EventType
from chronos_core.events import job_event
from tests.api.test_api_thread import HTTP_JOB, threaded


@pytest.mark.parametrize("thread", [True, False], ids=["api-thread", "one-loop"])
async def test_resumed_streams_have_no_gap(thread: bool) -> None:
    async with threaded("memory", thread=thread) as t:
        async with httpx.AsyncClient(base_url=t.base, timeout=30) as c:
            job = (await c.post("/jobs", json={"name": "x", **HTTP_JOB})).json()
            stored = await t.chronos.jobs.get(job["id"])
            bus = t.chronos.bus
            stop = asyncio.Event()
            last = {"id": 0}

            async def publish() -> None:  # the engines' loop (this test's), steadily
                while not stop.is_set():
                    e = job_event(EventType.JOB_UPDATED, stored, t.chronos.clock.now())
                    await bus.publish([e])
                    last["id"] = int(e.id or 0)
                    await asyncio.sleep(0.0005)

            publisher = asyncio.ensure_future(publish())
            gaps: list[str] = []
            try:
                await asyncio.sleep(0.2)
                for attempt in range(40):
                    start = last["id"] - 3
                    ids: list[int] = []
                    async with c.stream("GET", f"/monitor/logs/{job['id']}",
                                        headers={"Last-Event-ID": str(start)}) as s:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.25):
                                async for line in s.aiter_lines():
                                    if line.startswith("id:"):
                                        ids.append(int(line[3:].strip()))
                    want = list(range(start + 1, start + 1 + len(ids)))
                    if ids != want:
                        missing = sorted(set(range(start + 1, max(ids, default=start) + 1)) - set(ids))
                        gaps.append(f"stream {attempt}: from {start}, missing {missing[:10]}")
            finally:
                stop.set()
                await publisher
            assert not gaps, gaps
