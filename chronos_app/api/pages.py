"""Whole pages of ``GET /jobs`` and ``GET /jobs/{id}/history`` kept as the bytes that were sent, served
again while the store says that nothing it holds has changed since (``Store.data_stamp``).

Those two pages are what dashboards and scripts poll; unchanged, a second answer was the same store
read, decoding and JSON as the first (BENCHMARKS.md, "API"). A page is kept under a key made of
everything else it depends on:

* the route and its path parameters (the job's id of a history page);
* the validated query, every field of it (``parse_query``'s model, as JSON: a filter, a cursor, the
  limit), so two requests differing in any field are two pages;
* the caller's role (``scope["chronos.readonly"]``: a read token, a full token, no auth): what a job
  shows is masked the same for all today, but a page built for one role is never served to another, so
  a later difference in what a role is shown cannot leak through this cache;
* the job types registered (``JobTypes.version``: a type registered again masks its payloads with its
  new model).

Nothing in these pages depends on the clock: a job's next fire times are computed from its stored
``next_run_at`` (``Jobs.next_runs``), a run shows only its stored fields (``start_offset`` is
``due_at - scheduled_for``), the summaries are stored. The settings do not change while serving.

Each page is built under the stamp read *before* its store reads; the pages kept are those built
under the last stamp seen, and the first request that sees a newer one drops them all. A write that
commits after the stamp was read, before or during or after the reads, moves the stamp on, so the next
request builds the page again: a page older than the store's data may be kept, but it is never served.
A store that cannot tell (``data_stamp()`` None: MySQL, the memory store, a SQLite store without its
inline reader) keeps nothing here. While the scheduler commits (every claim, start and finish), the
stamp moves with each commit and pages are rebuilt at their full cost: this helps an unchanged store,
not a busy one.

Bounds: at most 256 pages and 32 MiB of them (``Bounded``: the oldest go first; a page larger than the
budget alone is not kept).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request

from chronos_core import JobTypes, Store

from .shown import Bounded

__all__ = ["KeptPages", "Page"]

_PAGE_OVERHEAD = 512  # the entry, its key and stamp, beside the page's bytes


@dataclass(slots=True)
class Page:
    """One request's page: its bytes if they were kept under the current stamp (``body``), else where
    to keep them once built (:meth:`keep`)."""

    pages: KeptPages | None
    key: str
    stamp: object
    body: bytes | None = None

    def keep(self, body: bytes) -> bytes:
        """Keep ``body`` (the page built for this request) under this request's key and stamp; returns
        it."""
        if self.pages is not None:
            self.pages.keep(self.key, self.stamp, body)
        return body


class KeptPages(Bounded[bytes]):
    """Pages as sent, by key (route, path, query, role, job types), all built under one stamp of the
    store, the last one seen (see the module's docstring)."""

    def __init__(self, store: Store, types: JobTypes, max_entries: int = 256,
                 max_bytes: int = 32 * 1024 * 1024) -> None:
        super().__init__(max_entries, max_bytes)
        self._store = store
        self._types = types
        self._stamp: object = None  # what every kept page was built under
        self.hits = 0
        self.misses = 0

    def page(self, request: Request, route: str, query: BaseModel) -> Page:
        """Read the store's stamp (before any store read of this request) and find the page kept for
        this request under it. Call it before the reads; :meth:`Page.keep` the page built after."""
        stamp = self._store.data_stamp()
        if stamp is None:
            return Page(None, "", None)
        if stamp != self._stamp:
            # a stamp never comes back (the number only grows, the connection is in it): every page
            # kept so far is older than the store's data and can never be sent again
            self.clear()
            self._stamp = stamp
        params = request.path_params
        key = "\x1f".join((route, *(f"{k}={v}" for k, v in sorted(params.items())),
                           repr(request.scope.get("chronos.readonly")), str(self._types.version),
                           query.model_dump_json()))
        body = self._entries.get(key)
        if body is not None:
            self.hits += 1
            return Page(self, key, stamp, body)
        self.misses += 1
        return Page(self, key, stamp)

    def keep(self, key: str, stamp: object, body: bytes) -> None:
        """Keep ``body`` under ``key`` if it was built under the current stamp (else a commit came while
        it was built, and a request since has seen it: the page is old already)."""
        if stamp == self._stamp:
            self._keep(key, body, len(body) + len(key) + _PAGE_OVERHEAD)
