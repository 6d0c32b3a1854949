"""Server-sent event frames: an event's ``data`` is its ``EventOut`` JSON; a live event's frame is encoded
once for every stream that sends it.

With 1,000 clients on ``/monitor/logs`` each event was validated into an ``EventOut``, dumped and
JSON-encoded 1,000 times, once per stream (bench/api.py, SSE case). A live event carries the bus's id,
the same for every subscriber, and its frame is the same bytes for all of them (only a stream's first
frame differs: it carries ``retry``), so :class:`EventFrames` keeps the last ``size`` frames by id.
"""

from __future__ import annotations

import json

from sse_starlette import ServerSentEvent

from chronos_core import Event

from .schemas import EventOut

__all__ = ["RETRY_MS", "EventFrames", "sse_event"]

RETRY_MS = 2000


def sse_event(event: Event, *, replayed: bool = False, first: bool = False) -> ServerSentEvent:
    """The event as a frame; ``replayed`` (from history): marked so, without the bus id; ``first``: with
    the client's reconnection delay."""
    body = EventOut.of(event).model_dump(mode="json")
    if replayed:
        body["data"]["replayed"] = True
    return ServerSentEvent(data=json.dumps(body, separators=(",", ":")), event=event.type.value,
                           id=None if replayed else event.id, retry=RETRY_MS if first else None)


class EventFrames:
    """Encoded frames of live events (not a stream's first), by bus id: the last ``size`` of them, and at
    most ``max_bytes`` of frames.

    A count alone did not bound them: a frame weighs what its event does, and a log line of the worker's
    limit (16 KiB by default, ``CHRONOS_LINE_LIMIT`` may raise it) JSON-escapes to up to 12 bytes per
    character (an emoji as two ``\\u`` escapes): ~190 KiB a frame, 1.5 GiB for 8,192 of them, kept for a
    job printing such lines (or any output a job relays) while one client watches. A frame over the whole
    budget is sent without being kept."""

    def __init__(self, size: int = 8192, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.size = size
        self.max_bytes = max_bytes
        # by id: the frame and what it was the frame of. An id can come back for another event: Kafka's
        # are partition:offset, numbered from 0:0 again when a broker that lost its data recreates the
        # topic; a kept frame is sent only for the event it was encoded from.
        self._frames: dict[str, tuple[tuple[object, ...], bytes]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._frames

    @property
    def nbytes(self) -> int:
        """The bytes of the kept frames."""
        return self._bytes

    def frame(self, event: Event) -> bytes:
        if event.id is None:
            return sse_event(event).encode()
        stamp = (event.time, event.type, event.job_id, event.run_id)
        kept = self._frames.get(event.id)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        frame = sse_event(event).encode()
        if kept is not None:
            self._drop(event.id)
        if len(frame) > self.max_bytes:
            return frame
        while self._frames and (len(self._frames) >= self.size or self._bytes + len(frame) > self.max_bytes):
            self._drop(next(iter(self._frames)))
        self._frames[event.id] = (stamp, frame)
        self._bytes += len(frame)
        return frame

    def _drop(self, event_id: str) -> None:
        self._bytes -= len(self._frames.pop(event_id)[1])
