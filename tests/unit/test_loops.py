"""``chronos_app.loops``: a coroutine method reached through ``on_loop`` runs on its object's loop (in its
thread), the caller awaiting on its own; a cancelled caller stops waiting while the call ends there; a
call on the owning loop itself goes straight through; a LoopThread tells how its main ended."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from chronos_app.loops import LoopThread, on_loop


class Probe:
    flag = "plain attribute"

    def __init__(self) -> None:
        self.ran_on: list[tuple[asyncio.AbstractEventLoop, int]] = []
        self.cancelled = threading.Event()
        self.done = threading.Event()

    async def where(self, x: int) -> int:
        self.ran_on.append((asyncio.get_running_loop(), threading.get_ident()))
        return x * 2

    async def slow(self, go: threading.Event) -> None:
        try:
            await asyncio.to_thread(go.wait, 10)
            self.done.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
def owner() -> Iterator[LoopThread]:
    stop = threading.Event()

    async def main() -> None:
        await asyncio.to_thread(stop.wait)

    thread = LoopThread(main, name="owner")
    thread.start()
    yield thread
    stop.set()
    assert thread.join(10) and thread.error is None


async def test_methods_run_on_the_owning_loop_and_end_there_when_the_caller_is_cancelled(
        owner: LoopThread) -> None:
    asyncio.get_running_loop().set_debug(True)
    probe = Probe()
    assert owner.loop is not None
    far = on_loop(probe, owner.loop)
    assert await far.where(21) == 42
    assert probe.ran_on == [(owner.loop, owner._thread.ident)]
    assert far.flag == "plain attribute"
    go = threading.Event()
    task = asyncio.ensure_future(far.slow(go))
    await asyncio.sleep(0.05)
    task.cancel()  # the caller stops waiting ...
    with pytest.raises(asyncio.CancelledError):
        await task
    go.set()  # ... the call goes on to its end on its own loop, not cut where it was
    assert await asyncio.to_thread(probe.done.wait, 10)
    assert not probe.cancelled.is_set()


async def test_a_call_on_the_owning_loop_goes_straight_through() -> None:
    probe = Probe()
    here = asyncio.get_running_loop()
    assert await on_loop(probe, here).where(1) == 2
    assert probe.ran_on == [(here, threading.get_ident())]


def test_a_loop_thread_reports_how_its_main_ended() -> None:
    ended = threading.Event()

    async def main() -> None:
        raise RuntimeError("boom")

    thread = LoopThread(main, name="failing", on_exit=ended.set)
    thread.start()
    assert thread.join(10) and ended.is_set()
    assert isinstance(thread.error, RuntimeError)
