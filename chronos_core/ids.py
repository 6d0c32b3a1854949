"""Time-ordered identifiers (UUID version 7, RFC 9562), so sorting by id sorts by creation time."""

from __future__ import annotations

import os
import random
import threading
import time

__all__ = ["new_id"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0
# The 62 random bits only keep ids made elsewhere apart; they need not be secret, so a generator seeded
# from the OS (again in a forked child) instead of a system call per id (os.urandom was a third of the cost).
_random = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_id() -> str:
    """A UUIDv7 string. Within one process ids are strictly increasing (a 12-bit counter orders ids made
    in the same millisecond; on overflow the timestamp is borrowed from the next millisecond)."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = 0
        counter = _counter
        rand = _random.getrandbits(62)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    h = f"{value:032x}"  # formatted as str(uuid.UUID(int=value)) would, without making the object
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
