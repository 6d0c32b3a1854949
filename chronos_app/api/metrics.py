"""Prometheus metrics: runs by outcome and start lag (counted from the event bus, so an API process sees
every worker's runs when the bus is shared), queue depth, scheduler fire lag, active SSE clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from chronos_core import EventType, SubscriptionOverflow
from chronos_core.models import RUN_EVENT_FOR_STATUS

from ..runtime import Served

__all__ = ["CONTENT_TYPE", "ApiMetrics"]

log = logging.getLogger("chronos.api.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STATUS_EVENTS = {t: s.value for s, t in RUN_EVENT_FOR_STATUS.items()}


class ApiMetrics:
    """One registry per app (so tests can build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("chronos_runs", "Run status changes seen, by status", ["status"], registry=r)
        self.start_lag = Histogram("chronos_run_start_lag_seconds",
                                   "Time from a scheduled slot to the start of its run",
                                   buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                   registry=r)
        self.fire_lag = Gauge("chronos_scheduler_fire_lag_seconds",
                              "Lag of the last slot this process's scheduler fired", registry=r)
        self.queue_depth = Gauge("chronos_queue_depth", "Dispatches waiting for a worker", registry=r)
        self.active_runs = Gauge("chronos_worker_active_runs", "Runs executing in this process", registry=r)
        self.sse_clients = Gauge("chronos_sse_clients", "Open server-sent event streams", registry=r)
        self._task: asyncio.Task[None] | None = None
        self._chronos: Served | None = None

    async def start(self, chronos: Served) -> None:
        """Count runs from the bus, on the engines' loop (``Served.on_engines``: with the API on a loop
        of its own, the three events of every run then do not each cross to it; the registry is
        thread-safe, ``render`` reads it from the API's loop)."""
        self._chronos = chronos
        await chronos.on_engines(self._start(chronos))

    async def _start(self, chronos: Served) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._watch(chronos, ready), name="chronos-api-metrics")
        await ready.wait()

    async def stop(self) -> None:
        if self._task is not None and self._chronos is not None:
            await self._chronos.on_engines(self._stop())

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self, chronos: Served, ready: asyncio.Event) -> None:
        types = set(_STATUS_EVENTS)
        while True:
            sub = chronos.events.subscribe(types=types)
            ready.set()
            try:
                async with sub:
                    async for event in sub:
                        self.runs.labels(_STATUS_EVENTS[event.type]).inc()
                        if event.type is EventType.RUN_STARTED:
                            self._observe_lag(event.data)
                return
            except SubscriptionOverflow:
                log.warning("metrics fell behind the event bus; counts may be short")

    def _observe_lag(self, data: dict[str, object]) -> None:
        try:
            started = datetime.fromisoformat(str(data["started_at"]))
            slot = datetime.fromisoformat(str(data["scheduled_for"]))
        except (KeyError, ValueError):
            return
        if data.get("trigger") == "schedule" and data.get("attempt") == 1:
            self.start_lag.observe(max(0.0, (started - slot).total_seconds()))

    async def render(self, chronos: Served) -> bytes:
        gauges = await chronos.gauges()  # read on the engines' loop (they may run on another)
        if gauges.queue_depth is not None:
            self.queue_depth.set(gauges.queue_depth)
        if gauges.fire_lag is not None:
            self.fire_lag.set(gauges.fire_lag)
        if gauges.active_runs is not None:
            self.active_runs.set(gauges.active_runs)
        return generate_latest(self.registry)
