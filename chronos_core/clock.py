"""Clocks: the real one and a fake one that tests move by hand."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from .ports import Clock, WakeSignal

__all__ = ["FakeClock", "SystemClock"]


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, deadline: datetime | None, wake: WakeSignal) -> None:
        if wake.is_set():
            return
        timeout = None if deadline is None else max(0.0, (deadline - self.now()).total_seconds())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wake.wait()


class FakeClock(Clock):
    """A clock that only moves when told (``advance``/``set``); sleepers wake when their deadline passes.
    Shipped for users' tests as well as ours."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime(2030, 1, 1, tzinfo=UTC)).astimezone(UTC)
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def set(self, t: datetime) -> None:
        if t < self._now:
            raise ValueError("a FakeClock does not go backwards")
        self._now = t.astimezone(UTC)
        self._moved.set()
        self._moved = asyncio.Event()

    def advance(self, seconds: float = 0.0, **kwargs: float) -> datetime:
        self.set(self._now + timedelta(seconds=seconds, **kwargs))
        return self._now

    async def sleep_until(self, deadline: datetime | None, wake: WakeSignal) -> None:
        while not wake.is_set() and (deadline is None or self._now < deadline):
            moved = asyncio.ensure_future(self._moved.wait())
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({moved, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()
                woken.cancel()
