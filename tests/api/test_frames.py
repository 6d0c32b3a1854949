"""A live event's SSE frame is encoded once and is what encoding it for each stream wrote."""

from __future__ import annotations

from datetime import UTC, datetime

from chronos_app.api.frames import EventFrames, sse_event
from chronos_core import Event, EventType


def event(event_id: str | None, **data: object) -> Event:
    e = Event(type=EventType.RUN_SUCCEEDED, time=datetime(2027, 1, 1, tzinfo=UTC), job_id="j", run_id="r",
              data=dict(data))
    e.id = event_id
    return e


def test_frames_are_the_events_encoded_and_kept_by_id() -> None:
    frames = EventFrames(size=2)
    first = event("1", exit_code=0)
    assert frames.frame(first) == sse_event(first).encode()
    assert b"id: 1" in frames.frame(first) and b"retry" not in frames.frame(first)
    assert frames.frame(first) is frames.frame(first)  # one encoding for every stream
    other = event("2", exit_code=1)
    assert frames.frame(other) == sse_event(other).encode() != frames.frame(first)
    frames.frame(event("3"))
    assert len(frames) == 2 and "1" not in frames and "3" in frames  # the oldest went first
    unnumbered = event(None, line="x")
    assert frames.frame(unnumbered) == sse_event(unnumbered).encode() and None not in frames
