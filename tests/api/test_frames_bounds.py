"""The SSE frames kept for every stream (chronos_app.api.frames.EventFrames) are bounded by their bytes,
not only by their number (secreview2 on 4721a4f).

A frame weighs what its event does: a log line at the worker's limit (16 KiB) of emoji JSON-escapes to
~190 KiB, and 8,192 kept frames of such lines held 1.5 GiB in the API process, for a job printing them
(or relaying what a server it calls answers) while a single client watches a stream.
"""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime

from chronos_app.api.frames import EventFrames, sse_event
from chronos_core import Event, EventType

MIB = 1024 * 1024
LINE = "\N{GRINNING FACE}" * 16 * 1024  # the worker's default line limit, in characters


def log_event(n: int, line: str = LINE) -> Event:
    e = Event(type=EventType.RUN_LOG, time=datetime(2027, 1, 1, tzinfo=UTC), job_id="j", run_id="r",
              data={"line": line, "stream": "stdout", "seq": n})
    e.id = str(n)
    return e


def test_kept_frames_stay_within_their_byte_budget() -> None:
    frames = EventFrames()
    frames.max_bytes = 4 * MIB
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(100):  # ~19 MiB of frames
            e = log_event(n)
            assert frames.frame(e) == sse_event(e).encode()
            del e
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert grown < 6 * MIB, f"{grown / MIB:.1f} MiB kept for 100 frames"
    assert len(frames) > 1  # the newest are kept, not none


def test_a_frame_over_the_budget_is_sent_without_pushing_the_others_out() -> None:
    frames = EventFrames(max_bytes=64 * 1024)
    small = [log_event(n, "ok") for n in range(10)]
    for e in small:
        frames.frame(e)
    big = log_event(99)
    assert frames.frame(big) == sse_event(big).encode()
    assert len(frames) == 10 and "99" not in frames and frames.nbytes <= frames.max_bytes
    assert all(frames.frame(e) is frames.frame(e) for e in small)
