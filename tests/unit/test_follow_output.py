"""``follow_output``: the stored tail, then live lines, without a gap or a repeat, on the in-memory adapters.

The worker's part is played by hand (``record_output`` / ``publish`` / ``finish_run`` in a chosen order),
so each ordering that can happen between a worker's writes and a reader's subscription is tested
deterministically."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from chronos_adapters.memory import MemoryEventBus, MemoryStore
from chronos_core.errors import RunNotFound
from chronos_core.events import run_event
from chronos_core.ids import new_id
from chronos_core.logs import follow_output, stored_lines
from chronos_core.models import (
    Event,
    EventType,
    Job,
    JobStatus,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    Trigger,
)
from chronos_core.retry import RetryPolicy

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Rig:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.bus = MemoryEventBus()
        self.job = Job(id=new_id(), name="j", type="shell", payload={}, schedule=None, timezone="UTC",
                       retry=RetryPolicy(), timeout=None, overlap=OverlapPolicy.ALLOW,
                       misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=5, status=JobStatus.ACTIVE,
                       created_at=T0, updated_at=T0)
        self.run = Run(id=new_id(), job_id=self.job.id, scheduled_for=T0, trigger=Trigger.MANUAL, attempt=1,
                       status=RunStatus.QUEUED, created_at=T0, due_at=T0)
        self.printed: list[str] = []  # what the "worker" printed so far

    async def start(self) -> None:
        await self.store.add_jobs([self.job])
        await self.store.add_run(self.run, dispatched=True)
        assert await self.store.start_run(self.run.id, "w", T0, T0 + timedelta(minutes=5))

    async def print(self, *lines: str, publish: bool = True, repeat_seq: int | None = None) -> None:
        events = []
        for line in lines:
            self.printed.append(line)
            events.append(Event(type=EventType.RUN_LOG, time=T0, job_id=self.job.id, run_id=self.run.id,
                                data={"line": line, "stream": "stdout", "attempt": 1,
                                      "seq": repeat_seq or len(self.printed)}))
        if publish:
            await self.bus.publish(events)

    async def flush(self) -> None:
        assert await self.store.record_output({self.run.id: ("\n".join(self.printed), len(self.printed))},
                                              "w")

    async def finish(self, *extra: str) -> None:
        self.printed.extend(extra)
        assert await self.store.finish_run(self.run.id, "w", status=RunStatus.SUCCEEDED,
                                           finished_at=T0 + timedelta(seconds=1),
                                           output="\n".join(self.printed), output_lines=len(self.printed))
        await self.bus.publish([run_event(await self.store.get_run(self.run.id), T0)])


async def until(check: Callable[[], bool | Awaitable[bool]], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.005)


def collect(rig: Rig, out: list[str], **options: object) -> asyncio.Task[None]:
    async def run() -> None:
        async for line in follow_output(rig.store, rig.bus, rig.run.id, poll=0.01, **options):  # type: ignore[arg-type]
            out.append(line)
    return asyncio.create_task(run())


async def test_the_tail_so_far_then_live_lines_then_the_end() -> None:
    rig = Rig()
    await rig.start()
    await rig.print("one", "two")
    await rig.flush()
    out: list[str] = []
    task = collect(rig, out)
    await until(lambda: out == ["one", "two"])
    await rig.print("three")
    await until(lambda: out[-1:] == ["three"])
    # lines an executor adds at the end (a response body) are not published: they come from the store
    await rig.finish("extra")
    await asyncio.wait_for(task, 10)
    assert out == ["one", "two", "three", "extra"]


async def test_lines_published_before_the_subscription_but_not_yet_stored_fill_the_gap() -> None:
    rig = Rig()
    await rig.start()
    await rig.print("1", "2")
    await rig.flush()
    await rig.print("3", "4")  # published before the reader subscribed, not in the store yet
    out: list[str] = []
    task = collect(rig, out)
    await until(lambda: out == ["1", "2"])
    await rig.print("5")  # the reader sees line 5 after 2: a gap
    await asyncio.sleep(0.05)
    assert out == ["1", "2"]  # it waits for the store rather than skip 3 and 4
    await rig.flush()
    await until(lambda: out == ["1", "2", "3", "4", "5"])
    await rig.print("6")
    await until(lambda: out[-1:] == ["6"])
    await rig.finish()
    await asyncio.wait_for(task, 10)
    assert out == ["1", "2", "3", "4", "5", "6"]


async def test_a_stored_line_seen_again_live_is_not_repeated() -> None:
    rig = Rig()
    await rig.start()
    out: list[str] = []
    task = collect(rig, out)
    await until(lambda: task.done() or rig.bus.subscribers == 1)
    await rig.print("a", "b", publish=False)
    await rig.flush()
    # the reader already read the (empty) store; now the live events of lines it may also get stored
    await rig.bus.publish([Event(type=EventType.RUN_LOG, time=T0, job_id=rig.job.id, run_id=rig.run.id,
                                 data={"line": x, "seq": i}) for i, x in enumerate(["a", "b"], 1)])
    await until(lambda: out == ["a", "b"])
    await rig.bus.publish([Event(type=EventType.RUN_LOG, time=T0, job_id=rig.job.id, run_id=rig.run.id,
                                 data={"line": "b", "seq": 2})])  # a repeat
    await rig.print("c")
    await rig.finish()
    await asyncio.wait_for(task, 10)
    assert out == ["a", "b", "c"]


async def test_lines_the_capped_tail_lost_are_marked() -> None:
    rig = Rig()
    await rig.start()
    assert await rig.store.record_output(
        {rig.run.id: ("[... 120 earlier characters not kept]\nline 9\nline 10", 10)}, "w")
    assert stored_lines(await rig.store.get_run(rig.run.id)) == (9, ["line 9", "line 10"])
    out = [line async for line in follow_output(rig.store, rig.bus, rig.run.id, follow=False)]
    assert out == ["[... 8 line(s) not kept]", "line 9", "line 10"]


async def test_a_finished_run_gives_its_output_and_ends() -> None:
    rig = Rig()
    await rig.start()
    await rig.print("x", "y", publish=False)
    await rig.finish()
    out = [line async for line in follow_output(rig.store, rig.bus, rig.run.id)]
    assert out == ["x", "y"]
    assert rig.bus.subscribers == 0


async def test_unknown_runs_and_runs_deleted_meanwhile() -> None:
    rig = Rig()
    await rig.start()
    with pytest.raises(RunNotFound):
        async for _ in follow_output(rig.store, rig.bus, new_id()):
            pass
    assert rig.bus.subscribers == 0
    out: list[str] = []
    task = collect(rig, out)
    await until(lambda: rig.bus.subscribers == 1)
    await rig.print("1", "2")
    await until(lambda: out == ["1", "2"])
    await rig.print("4", repeat_seq=4)  # a gap the store will never fill: the job is deleted
    await rig.store.delete_job(rig.job.id)
    await asyncio.wait_for(task, 10)
    assert out == ["1", "2"]
