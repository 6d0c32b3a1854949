"""Interpreter tuning for a process whose main work is Chronos (``chronos serve | scheduler | worker``
apply :func:`tune_process` after start-up; an embedding program may call it once it is set up).

* **Garbage collector.** At thousands of runs a second the cyclic GC, not the scheduler, sets the tail of
  the fire lag: each full collection walks every tracked object of the process (modules, jobs, pools),
  and runs in flight are promoted often enough to trigger one every second or so. 10,000 ``@every 1s``
  jobs in memory (BENCHMARKS.md): p99 fire lag 120-230 ms with the defaults, ~30 ms after
  ``gc.freeze()``, ~8 ms with the young generation also collected 10x less often.
* **GIL switch interval.** A SQL store works in threads beside the event loop. Each time a store thread
  comes back from the database (SQLite releases the GIL on every step, a socket read does too) it waits
  for the busy loop thread to let go of the GIL, up to the switch interval (5 ms by default), so every
  store transaction was stretched by several such waits; the store's single writer then fell behind
  at 10,000 runs a second on SQLite. 0.5 ms bounds those waits.
"""

from __future__ import annotations

import gc
import logging
import sys

__all__ = ["SWITCH_INTERVAL", "YOUNG_THRESHOLD", "tune_gc", "tune_process"]

log = logging.getLogger("chronos.tuning")

YOUNG_THRESHOLD = 7000
"""Allocations between collections of the youngest generation (CPython's default is 700)."""

SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (CPython's default is 0.005)."""


def tune_process() -> None:
    """:func:`tune_gc` and a GIL switch interval of at most :data:`SWITCH_INTERVAL`. Process-wide:
    embedding programs decide."""
    tune_gc()
    if sys.getswitchinterval() > SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)
    log.info("interpreter tuned for a long-running process: %d objects frozen, gc thresholds %s, "
             "switch interval %g s", gc.get_freeze_count(), gc.get_threshold(), sys.getswitchinterval())


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
