"""What the listings decoded, kept by id (a job's, a run's) with the driver values it was decoded from.

A page of ``GET /jobs`` or of a job's history reads the same rows again and again (polled dashboards,
``limit=100`` pages); decoding them was a third of a page's CPU (each job's payload ``json.loads``, a
dozen timestamps parsed per job, the summary's and each run's too: py-spy, BENCHMARKS.md). A row is
decoded again only if any of its values differs from those its kept object was decoded from (a tuple
compare: no version column is trusted), so what is handed out is exactly what decoding the row would
give (a column's driver type is fixed by its declared type, so equal values decode alike). The objects
are shared between callers, as the memory store shares its own: nothing changes a stored job, summary
or run in place (``Jobs`` builds new ones).

Bounded by what it holds, as the API's ``ShownJobs`` (a read token paging through a store of large jobs
must not make the server keep all of them): at most ``max_entries`` rows and about ``max_bytes``, the
oldest first; a row weighing more than a hundredth of that is decoded each time. A row weighs (:func:`weigh`)
twice its text (the values kept, the strings decoded from them) plus, for the JSON in it, a cost per
token (each ``,`` ``:`` ``[`` ``{``): a payload of many tiny values decodes to many times its text
(``{}`` is 3 bytes of text and a 64-byte dict; review-apigil F4 measured 12.6 times what twice the text
counted), and the tokens bound how many objects decoding it can make. Hits take no lock (one dict
read); a miss stores under a lock (the engines' store lists from several pool threads at once)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["DecodedRows", "weigh"]

E = TypeVar("E")

_OVERHEAD = 512  # the entry's tuple, the key and the objects' own overhead beyond their text
_PER_TOKEN = 80
"""Bytes per JSON token a decoded row may hold (tracemalloc of ``json.loads``: 9-40 bytes for lists of
numbers, strings, ``{}`` and key/value pairs with shared keys, 64 for one-key dicts, 82 for distinct
keys: the most seen, rounded down to 80 with the twice-the-text also counted)."""


def weigh(values: Sequence[Any]) -> int:
    """What keeping ``values`` and the objects decoded from them costs, conservatively (module doc)."""
    cost = _OVERHEAD
    for v in values:
        if isinstance(v, str):
            cost += 2 * len(v) + _PER_TOKEN * (v.count(",") + v.count(":") + v.count("[") + v.count("{"))
        elif isinstance(v, bytes):
            cost += 2 * len(v) + _PER_TOKEN * (v.count(b",") + v.count(b":") + v.count(b"[") +
                                               v.count(b"{"))
    return cost


class DecodedRows(Generic[E]):
    """``read(row)`` (a codec's reader of driver rows) for rows whose values ``row[start:stop]`` were seen
    before with the same key (``row[key]``, the job's id): the object decoded then."""

    def __init__(self, read: Callable[[Sequence[Any]], E], start: int, stop: int, key: int = 0, *,
                 max_entries: int = 50_000, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._read = read
        self._start, self._stop, self._key = start, stop, key
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[Any, tuple[tuple[Any, ...], E, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __call__(self, row: Sequence[Any]) -> E:
        values = tuple(row[self._start:self._stop])
        key = row[self._key]
        entry = self._entries.get(key)
        if entry is not None and entry[0] == values:
            return entry[1]
        obj = self._read(row)
        cost = weigh(values)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            if cost <= self.max_bytes // 100:
                self._entries[key] = (values, obj, cost)
                self._bytes += cost
                while self._bytes > self.max_bytes or len(self._entries) > self.max_entries:
                    self._bytes -= self._entries.pop(next(iter(self._entries)))[2]
        return obj

    def forget(self, key: Any) -> None:
        """Drop the entry of ``key`` (its job was deleted)."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
