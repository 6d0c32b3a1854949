"""An in-process dispatch queue: the embedded default between scheduler and worker, and a test double."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from datetime import datetime

from chronos_core.ports import Dispatch, DispatchQueue

__all__ = ["MemoryDispatchQueue"]


class MemoryDispatchQueue(DispatchQueue):
    """FIFO in memory; not durable (the scheduler re-dispatches unstarted runs from the store after a
    restart). ``ack`` has nothing to do: a dispatch leaves the queue when it is taken."""

    durable = False

    def __init__(self) -> None:
        self._q: asyncio.Queue[Dispatch] = asyncio.Queue()
        self._getters: set[asyncio.Task[Dispatch]] = set()
        self.acked = 0

    async def stop(self) -> None:
        for getter in list(self._getters):  # a get waiting meanwhile raises CancelledError
            getter.cancel()

    async def put(self, dispatches: Sequence[Dispatch]) -> None:
        for d in dispatches:
            self._q.put_nowait(d)

    async def get(self) -> Dispatch:
        if not self._q.empty():
            return self._q.get_nowait()
        getter = asyncio.ensure_future(self._q.get())
        self._getters.add(getter)
        try:
            return await getter
        except asyncio.CancelledError:
            if getter.done() and not getter.cancelled():  # taken just as we were cancelled: keep it
                self._q.put_nowait(getter.result())
            raise
        finally:
            self._getters.discard(getter)

    def get_nowait(self) -> Dispatch | None:
        """The next dispatch, or None if the queue is empty (for tests that drive a worker by hand)."""
        try:
            return self._q.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def ack(self, dispatch: Dispatch) -> None:
        self.acked += 1

    async def depth(self) -> int:
        return self._q.qsize()

    async def sent_before(self, run_ids: Collection[str], before: datetime) -> set[str]:
        """The runs not waiting here (a dispatch in the queue is waiting, not lost)."""
        waiting = {d.run.id for d in list(self._q._queue)}  # type: ignore[attr-defined]
        return {r for r in run_ids if r not in waiting}
