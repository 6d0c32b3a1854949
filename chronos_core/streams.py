"""Resuming a stream of live events: the rule every follower of the bus shares (the SSE streams, the
Python API). A client that comes back with the id of the last event it saw gets what the bus still
retains after that id. When the bus no longer has it (its window moved on, or the process restarted),
the stream starts instead with the runs' current state from the store's history: one ``run.<status>``
event per recent run, oldest first, carrying the stored output tail (``output``, ``output_lines``).
A run stream always starts with its run's current state, unless it resumes from an id the bus retains."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from .events import run_event
from .models import Event, EventType, Run
from .ports import Clock, EventBus, Store, Subscription

__all__ = ["Resumed", "replay_events", "resume"]


@dataclass(slots=True)
class Resumed:
    """A resumed stream: send ``replayed`` first (rebuilt from the store: they have no bus id, so a
    client's position stays at its last live event), then the events of ``subscription``, which was
    registered before the history was read, so nothing published in between is missed. ``snapshot``
    holds the runs the replay was built from (a run stream: its run, numbered up to its
    ``output_lines``; live ``run.log`` lines up to that number are already in its output)."""

    subscription: Subscription
    replayed: list[Event]
    snapshot: list[Run]


def replay_events(runs: list[Run], types: Collection[EventType] | None, now: datetime) -> list[Event]:
    """The status events of ``runs`` (newest first, as the store lists them) oldest first, each with the
    run's stored output tail and its ``output_lines`` (``run.log`` events numbered up to it are in the
    output); only those of ``types`` (None: all)."""
    out = []
    for run in reversed(runs):
        event = run_event(run, now)
        event.data["output"] = run.output
        event.data["output_lines"] = run.output_lines
        if types is None or event.type in types:
            out.append(event)
    return out


async def resume(bus: EventBus, store: Store, clock: Clock, *, job_id: str | None = None,
                 run_id: str | None = None, types: Collection[EventType] | None = None,
                 after: str | None = None, history: int = 20) -> Resumed:
    """Subscribe (filtered as :meth:`EventBus.subscribe`) and pick how the stream starts: after ``after``
    from the bus if it retains that id (or cannot tell); else from the store, a run stream with its run,
    another with its ``history`` most recent runs (only when resuming: a fresh stream starts live).
    :class:`RunNotFound` for a run stream of no such run (the subscription is closed then)."""
    kinds = None if types is None else set(types)
    sub = bus.subscribe(job_id=job_id, run_id=run_id, types=kinds, after=after)
    try:
        snapshot: list[Run] = []
        if after is None or bus.retains(after) is False:
            if run_id is not None:
                snapshot = [await store.get_run(run_id)]
            elif after is not None:
                snapshot = await store.list_runs(job_id, limit=history)
        return Resumed(sub, replay_events(snapshot, kinds, clock.now()), snapshot)
    except BaseException:
        await sub.aclose()
        raise
