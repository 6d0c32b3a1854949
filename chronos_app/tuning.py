"""Process tuning for a process whose main work is Chronos (``chronos serve | scheduler | worker`` apply it
after start-up; an embedding program may call :func:`tune_gc` itself once it is set up).

At thousands of runs a second the cyclic garbage collector, not the scheduler, sets the tail of the fire
lag: each full collection walks every tracked object of the process (modules, jobs, pools), and runs in
flight are promoted often enough to trigger one every second or so. Measured with 10,000 ``@every 1s``
jobs in memory (BENCHMARKS.md): p99 fire lag 120-230 ms with the defaults, ~30 ms after ``gc.freeze()``,
~8 ms with the young generation also collected 10x less often.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["YOUNG_THRESHOLD", "tune_gc"]

log = logging.getLogger("chronos.tuning")

YOUNG_THRESHOLD = 7000
"""Allocations between collections of the youngest generation (CPython's default is 700)."""


def tune_gc(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Move every object alive now (imports, configuration, stored jobs) into the collector's permanent
    generation, so later collections do not walk them again (``gc.freeze()``), and collect the youngest
    generation every ``young_threshold`` allocations (never fewer than the current setting).

    Objects frozen are still freed when their last reference goes; only reference cycles among them are
    never collected, so call this once set up, not in a loop. Process-wide: embedding programs decide."""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young and young < young_threshold:
        gc.set_threshold(young_threshold, middle, old)
    log.info("garbage collector tuned for a long-running process: %d objects frozen, thresholds %s",
             gc.get_freeze_count(), gc.get_threshold())
