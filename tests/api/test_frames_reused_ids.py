"""A bus id can come back for another event: Kafka event ids are partition:offset, and a broker that lost its
data (the events topic recreated, tests/contracts/test_kafka_topics_lost.py) numbers from 0:0 again. The
API's kept frames (EventFrames) must then send the new event, not the old one's frame (racereview2)."""

from __future__ import annotations

from datetime import UTC, datetime

from chronos_app.api.frames import EventFrames, sse_event
from chronos_core import Event, EventType


def _event(event_id: str, type_: EventType, run_id: str, second: int) -> Event:
    e = Event(type=type_, time=datetime(2027, 1, 1, 0, 0, second, tzinfo=UTC), job_id="j", run_id=run_id,
              data={})
    e.id = event_id
    return e


def test_a_reused_bus_id_is_sent_as_the_new_event() -> None:
    frames = EventFrames()
    before = _event("0:0", EventType.RUN_SUCCEEDED, "run-before-the-loss", 1)
    assert frames.frame(before) == sse_event(before).encode()
    after = _event("0:0", EventType.RUN_STARTED, "run-after-the-loss", 9)  # the recreated topic's 0:0
    assert frames.frame(after) == sse_event(after).encode()
    assert b"run-after-the-loss" in frames.frame(after) and b"run-before-the-loss" not in frames.frame(after)
    assert frames.frame(after) is frames.frame(after)  # and kept in its turn
