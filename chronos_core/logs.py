"""A run's output, read like ``kubectl logs -f``: the output so far from the store, then the live lines
from the event bus, with no gap and no repeat.

Workers store the output so far of each running run about once a second (``Store.record_output``) and
publish every line as a ``run.log`` event numbered ``seq`` (``Run.output_lines`` is the number of the last
stored line). A follower subscribes first, then reads the stored output: live lines numbered up to what it
printed are repeats and dropped; a jump in the numbers is a gap (lines published before the subscription
that the store did not have yet), filled from the store once the worker's next write has them. At the
run's final status the store holds the whole outcome (with lines an executor added at the end) and the
follower ends with it. Lines no longer kept (the stored output is a capped tail) are replaced by a marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

from .errors import RunNotFound, SubscriptionOverflow
from .models import Event, EventType, Run
from .ports import EventBus, Store, Subscription

__all__ = ["follow_output", "stored_line_range", "stored_lines"]

_FINAL = frozenset({EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_TIMED_OUT,
                    EventType.RUN_CANCELLED, EventType.RUN_SKIPPED, EventType.RUN_MISSED})
_TYPES = frozenset({EventType.RUN_LOG, *_FINAL})
_DROPPED = re.compile(r"\[\.\.\. \d+ earlier characters not kept\]")
_CLOSED = object()
_OVERFLOW = object()


def stored_lines(run: Run) -> tuple[int, list[str]]:
    """The lines of the run's stored output and the number of the first (the tail may have lost the
    earliest lines; its "[... N earlier characters not kept]" heading is not a line of output)."""
    lines = run.output.split("\n") if run.output else []
    if len(lines) > 1 and _DROPPED.fullmatch(lines[0]):
        lines = lines[1:]
    last = max(run.output_lines, len(lines))
    return last - len(lines) + 1, lines


def stored_line_range(run: Run, start: int, end: int) -> list[tuple[int | None, str]]:
    """Lines ``start..end`` of the run's stored output, each with its number, and a numberless marker
    for each stretch of lines the capped tail no longer keeps."""
    first, kept = stored_lines(run)
    out: list[tuple[int | None, str]] = []
    missing = 0
    for seq in range(start, end + 1):
        if first <= seq < first + len(kept):
            if missing:
                out.append((None, f"[... {missing} line(s) not kept]"))
                missing = 0
            out.append((seq, kept[seq - first]))
        else:
            missing += 1
    if missing:
        out.append((None, f"[... {missing} line(s) not kept]"))
    return out


def _lines(run: Run, pending: dict[int, str], start: int, end: int) -> list[str]:
    """Lines ``start..end``: from the stored tail, else from the live lines held back, else a marker for
    each run of lines no longer anywhere."""
    first, kept = stored_lines(run)
    out: list[str] = []
    missing = 0
    for seq in range(start, end + 1):
        if first <= seq < first + len(kept):
            line: str | None = kept[seq - first]
        else:
            line = pending.get(seq)
        if line is None:
            missing += 1
            continue
        if missing:
            out.append(f"[... {missing} line(s) not kept]")
            missing = 0
        out.append(line)
    if missing:
        out.append(f"[... {missing} line(s) not kept]")
    return out


async def follow_output(store: Store, bus: EventBus, run_id: str, *, follow: bool = True, poll: float = 0.25,
                        gap_timeout: float = 10.0) -> AsyncIterator[str]:
    """The run's output line by line: what it printed so far, then (with ``follow``) each new line until
    the run ends. :class:`RunNotFound` if there is no such run (before the first line); a run deleted
    meanwhile ends the output."""
    sub = bus.subscribe(run_id=run_id, types=_TYPES) if follow else None
    queue: asyncio.Queue[Any] = asyncio.Queue()
    reader: asyncio.Task[None] | None = None

    async def read(subscription: Subscription) -> None:
        try:
            async for event in subscription:
                queue.put_nowait(event)
            queue.put_nowait(_CLOSED)
        except SubscriptionOverflow:
            queue.put_nowait(_OVERFLOW)

    try:
        run = await store.get_run(run_id)
        first, kept = stored_lines(run)
        if first > 1:
            yield f"[... {first - 1} line(s) not kept]"
        for line in kept:
            yield line
        printed = first + len(kept) - 1
        if sub is None or run.finished:
            return
        reader = asyncio.create_task(read(sub))
        pending: dict[int, str] = {}  # live lines after a gap, by number
        final = behind = False
        gap_deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            if final or behind or pending:  # the store has what is missing (or will, soon)
                try:
                    run = await store.get_run(run_id)
                except RunNotFound:
                    return  # deleted with its job
                if final or behind or run.finished:
                    target = run.output_lines
                else:
                    target = min(pending) - 1
                behind = False
                if run.output_lines >= target or run.finished:
                    for line in _lines(run, pending, printed + 1, target):
                        yield line
                    printed = max(printed, target)
                    if run.finished:
                        return
                    gap_deadline = None
                elif gap_deadline is None:
                    gap_deadline = loop.time() + gap_timeout
                elif loop.time() >= gap_deadline:  # the worker stopped storing output: move on
                    yield f"[... {target - printed} line(s) not kept]"
                    printed, gap_deadline = target, None
                while printed + 1 in pending:
                    yield pending.pop(printed + 1)
                    printed += 1
                for seq in [s for s in pending if s <= printed]:
                    del pending[seq]
            try:
                item = await asyncio.wait_for(queue.get(), poll if (final or pending) else None)
            except TimeoutError:
                continue
            if item is _CLOSED:
                final = True  # the bus is stopping: end with what the store has
            elif item is _OVERFLOW:  # this reader fell behind: listen again, catch up from the store
                sub = bus.subscribe(run_id=run_id, types=_TYPES)
                reader = asyncio.create_task(read(sub))
                behind = True
            elif isinstance(item, Event):
                if item.type in _FINAL:
                    final = True
                    continue
                number = item.data.get("seq")
                line = str(item.data.get("line", ""))
                if not isinstance(number, int):
                    yield line  # from a worker that does not number its lines
                elif number == printed + 1 and not pending:
                    yield line
                    printed = number
                elif number > printed:
                    pending[number] = line
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if sub is not None:
            await sub.aclose()
