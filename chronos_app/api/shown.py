"""Jobs and runs as the API shows them, written straight to JSON bytes, and jobs kept per version.

``JobOut`` / ``RunOut`` (schemas.py) are the shapes, in the OpenAPI document and in every answer; this
module writes the same bytes without building a pydantic model per item: a dict in the model's field
order, serialised by pydantic-core (``to_json``, the serialiser ``model_dump_json`` uses, so datetimes,
enums and nested models come out the same). A test checks that every answer validates as the model and
serialises back to the same bytes.

What a job as shown needs beyond its stored fields depends only on the job's version: the payload and
notifications with their secrets masked (masking validates the payload against its type's model) and the
next fire times (three cron slots walk the calendar). Before they were kept, those were two thirds of
``GET /jobs`` (bench/api.py; BENCHMARKS.md). An entry is keyed by the job's id, its version
(``updated_at``, which every change of the definition moves forward, see ``Jobs.update``) and
``next_run_at`` (the next fire times start there), and is used only for the same payload model (a type
registered again masks with its new model). What is kept is the job's JSON, written with those parts
and a summary of runs; a newer summary is spliced in place of the old one's bytes.

The cache is bounded by what it holds, not only by its number of jobs: an entry weighs what its job
weighs (its JSON, about the job's size; a job may be 1 MiB), so a count alone let a write token make the
server hold 20,000 large jobs - creating, reading and deleting each in turn - and a read-only token
paging through a store of large jobs made it keep a copy of all of them. An entry keeps only the JSON
bytes (never the masked payload as Python objects, whose size is not the JSON's: see ``ShownJobs``), and
is counted for them plus a fixed overhead. At most ``max_bytes`` are kept, the oldest entries go first, a
job larger than that is shown without being kept, and a job deleted here is forgotten.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any, Generic, TypeVar

from pydantic_core import to_json as _to_json

from chronos_core import Job, JobSummary, JobTypes, Run
from chronos_core.hooks import redact_notify
from chronos_core.models import FINISHED_RUN_STATUSES
from chronos_core.operations import Jobs

from .schemas import JOB_OUT_SOURCES, RUN_OUT_SOURCES, JobOut, LastRun, RunOut

__all__ = ["Bounded", "ShownJobs", "ShownRuns", "job_dict", "page_json", "run_dict", "run_json",
           "runs_page_json"]

def to_json(value: Any) -> bytes:
    # aliases, as the OpenAPI document names them and as input takes them (an exclusion's ``from``)
    return _to_json(value, by_alias=True)


_NO_SUMMARY = JobSummary()
# the summary as a tuple (the key of the JSON kept with it): one C call, where a generator over the fields
# was half of a kept job's cost in a page (py-spy, GET /jobs?limit=100)
_summary_key = attrgetter(*(f.name for f in dataclasses.fields(JobSummary)))
_FROM_JOB = frozenset(JOB_OUT_SOURCES["job"])
_FROM_SUMMARY = frozenset(JOB_OUT_SOURCES["summary"])
_JOB_ORDER = tuple(JobOut.model_fields)  # the order the model serialises its fields in
_RUN_ORDER = tuple(RunOut.model_fields)
_FROM_RUN = frozenset(RUN_OUT_SOURCES["run"])
assert tuple(LastRun.model_fields) == ("id", "status", "scheduled_for", "finished_at", "duration")


def _last_run(s: JobSummary) -> dict[str, Any] | None:
    if s.last_run_id is None or s.last_run_status is None or not s.last_run_finished_at:
        return None
    started = s.last_run_started_at
    return {"id": s.last_run_id, "status": s.last_run_status, "scheduled_for": s.last_run_scheduled_for,
            "finished_at": s.last_run_finished_at,
            "duration": None if started is None else (s.last_run_finished_at - started).total_seconds()}


def job_dict(job: Job, payload: dict[str, Any], notify: list[dict[str, Any]], summary: JobSummary | None,
             next_runs: list[datetime]) -> dict[str, Any]:
    """The fields of ``JobOut``, in its order, for a job whose masked parts are given."""
    s = summary or _NO_SUMMARY
    derived = {"payload": payload, "notify": notify, "last_run": _last_run(s), "next_runs": next_runs}
    return {name: getattr(job, name) if name in _FROM_JOB else getattr(s, name) if name in _FROM_SUMMARY
            else derived[name] for name in _JOB_ORDER}


def run_dict(run: Run, parent_run_id: str | None = None, children: list[str] | None = None
             ) -> dict[str, Any]:
    """The fields of ``RunOut``, in its order."""
    derived = {"start_offset": (run.due_at - run.scheduled_for).total_seconds(),
               "parent_run_id": parent_run_id, "children": children or []}
    return {name: getattr(run, name) if name in _FROM_RUN else derived[name] for name in _RUN_ORDER}


def run_json(run: Run, parent_run_id: str | None = None, children: list[str] | None = None) -> bytes:
    """A run as ``RunOut`` serialises it."""
    return to_json(run_dict(run, parent_run_id, children))


def runs_page_json(runs: Sequence[Run], next_cursor: str | None) -> bytes:
    """A ``RunPage``."""
    return to_json({"items": [run_dict(r) for r in runs], "next_cursor": next_cursor})


V = TypeVar("V")


class Bounded(Generic[V]):
    """Values kept by key, oldest first, within two bounds: at most ``max_entries`` of them and at most
    ``max_bytes`` of what they are counted for (each value's cost, an estimate its owner gives). The
    oldest go first; the order is that of keeping (a value kept again under its key is the newest; reading
    one does not move it). A value counted for more than ``max_bytes`` alone is not kept, and does not
    push the others out. The bounds may be changed at any time; they are applied at the next keep or
    weigh. The one bounded cache of ``ShownJobs`` and ``ShownRuns``."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[str, V] = {}
        self._costs: dict[str, int] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """What the kept values are counted for."""
        return self._bytes

    def _keep(self, key: str, value: V, cost: int) -> None:
        """Keep ``value`` under ``key`` (in place of the key's value, as the newest), counted for ``cost``
        bytes; then as :meth:`_weigh`."""
        if key in self._costs:
            self.forget(key)
        self._entries[key] = value
        self._costs[key] = 0
        self._weigh(key, cost)

    def _weigh(self, key: str, cost: int) -> None:
        """Count the value kept under ``key`` for ``cost`` bytes, then drop the oldest values while over a
        bound (a value over the whole budget alone: only itself)."""
        self._bytes += cost - self._costs[key]
        self._costs[key] = cost
        if cost > self.max_bytes:
            self.forget(key)
        entries, costs = self._entries, self._costs
        while entries and (self._bytes > self.max_bytes or len(entries) > self.max_entries):
            oldest = next(iter(entries))
            del entries[oldest]
            self._bytes -= costs.pop(oldest)

    def clear(self) -> None:
        """Drop every value kept."""
        self._entries.clear()
        self._costs.clear()
        self._bytes = 0

    def forget(self, key: str) -> None:
        """Drop the value kept under ``key``, if any (for ``ShownJobs``: the job was deleted, or is
        dropped to stay within the bounds)."""
        cost = self._costs.pop(key, None)
        if cost is not None:
            del self._entries[key]
            self._bytes -= cost


_ENDED = frozenset(FINISHED_RUN_STATUSES)
_RUN_ENTRY_OVERHEAD = 256  # the entry's tuple and key beside its JSON


def _run_key(run: Run) -> tuple[Any, ...]:
    return (run.status, run.finished_at, run.started_at, run.output_lines, run.exit_code, run.attempt)


class ShownRuns(Bounded[tuple[tuple[Any, ...], bytes]]):
    """Runs that ended, as a page of history shows them, kept: at most ``max_entries`` runs and about
    ``max_bytes`` of JSON (the oldest go first; a run larger than a hundredth of that is not kept).

    A run that ended never changes in any store (its status only moves forward, and every write after
    the start is fenced on ``running``: the port's invariants), so its JSON is kept by id, checked
    against its status, times, lines and exit code. Writing the JSON was over half of the CPU of
    ``GET /jobs/{id}/history?limit=100`` (pydantic-core infers the type of every value: ~9 us a run),
    and history pages are polled. Runs still queued or running are written every time. The bytes are
    those :func:`runs_page_json` writes."""

    def __init__(self, max_entries: int = 20_000, max_bytes: int = 32 * 1024 * 1024) -> None:
        super().__init__(max_entries, max_bytes)

    def json(self, run: Run) -> bytes:
        """The run as a page of runs shows it (``RunOut`` without its chain links)."""
        if run.status not in _ENDED:
            return to_json(run_dict(run))
        key = _run_key(run)
        entry = self._entries.get(run.id)
        if entry is not None and entry[0] == key:
            return entry[1]
        body = to_json(run_dict(run))
        if entry is not None:
            self.forget(run.id)
        cost = len(body) + _RUN_ENTRY_OVERHEAD
        if cost <= self.max_bytes // 100:
            self._keep(run.id, (key, body), cost)
        return body

    def page(self, runs: Sequence[Run], next_cursor: str | None) -> bytes:
        """A ``RunPage`` (the same bytes as :func:`runs_page_json`)."""
        json = self.json
        return page_json([json(r) for r in runs], next_cursor)


def page_json(items: Sequence[bytes], next_cursor: str | None) -> bytes:
    """A ``JobPage`` (or any ``{"items": [...], "next_cursor": ...}`` page) of items written already."""
    return b'{"items":[' + b",".join(items) + b'],"next_cursor":' + to_json(next_cursor) + b"}"


# A job's JSON in three pieces: what depends only on the job's version (its fields, the masked payload and
# notifications, the next fire times), around what depends on its summary of runs (``last_run`` on). The
# summary's fields are one run of JobOut's order, so a new summary replaces the middle of the bytes kept
_BY_SUMMARY = _FROM_SUMMARY | {"last_run"}
_SUMMARY_AT = next(i for i, name in enumerate(_JOB_ORDER) if name in _BY_SUMMARY)
_SUMMARY_END = _SUMMARY_AT + len(_BY_SUMMARY)
assert set(_JOB_ORDER[_SUMMARY_AT:_SUMMARY_END]) == _BY_SUMMARY  # one run of fields
assert _SUMMARY_AT > 0 and _SUMMARY_END < len(_JOB_ORDER)  # with fields before it and after it


def _inner(fields: dict[str, Any]) -> bytes:
    """``fields`` as the members of a JSON object, without its braces."""
    return to_json(fields)[1:-1]


def _summary_json(summary: JobSummary | None) -> bytes:
    s = summary or _NO_SUMMARY
    last = _last_run(s)
    return _inner({name: last if name == "last_run" else getattr(s, name)
                   for name in _JOB_ORDER[_SUMMARY_AT:_SUMMARY_END]})


@dataclasses.dataclass(slots=True)
class _Entry:
    """A job's JSON with the summary it was written with, and where that summary's bytes are in it."""

    version: tuple[datetime, datetime | None, object]  # updated_at, next_run_at, payload model
    summary: tuple[Any, ...] | None
    json: bytes
    at: int  # json[at:end] is the summary's part
    end: int


_ENTRY_OVERHEAD = 1024  # the entry, its version and summary tuples, the key, beside its JSON


class ShownJobs(Bounded[_Entry]):
    """Jobs as shown, kept per job version: at most ``max_entries`` jobs and about ``max_bytes`` of them
    (the oldest go first; a job weighing more than ``max_bytes`` is not kept).

    An entry is the job's JSON bytes and nothing else: the masked payload and notifications and the next
    fire times are written into it and dropped, and a new summary of runs is spliced into the bytes
    (the summary's part is a run of fields in the middle). So what an entry holds is what it is counted
    for - its JSON plus a fixed overhead - whatever the payload's shape. (Keeping the masked parts, as a
    copy of every dict and list of the payload, made a payload of 300,000 empty objects - 900 KB of JSON
    - hold ~22 MB counted as ~1.8 MB: a read-only token paging through a few such jobs grew the process
    by hundreds of MiB within the 64 MiB budget; review-secattack F1.)"""

    def __init__(self, types: JobTypes, max_entries: int = 20_000, max_bytes: int = 64 * 1024 * 1024
                 ) -> None:
        super().__init__(max_entries, max_bytes)
        self._types = types

    def _write(self, job: Job, version: tuple[datetime, datetime | None, object],
               summary: JobSummary | None, key: tuple[Any, ...] | None) -> _Entry:
        fields = job_dict(job, self._types.redact(job.type, job.payload), redact_notify(job.notify),
                          summary, Jobs.next_runs(job))
        names = _JOB_ORDER
        head = _inner({name: fields[name] for name in names[:_SUMMARY_AT]})
        middle = _summary_json(summary)
        tail = _inner({name: fields[name] for name in names[_SUMMARY_END:]})
        at = 1 + len(head) + 1
        return _Entry(version, key, b"".join((b"{", head, b",", middle, b",", tail, b"}")), at,
                      at + len(middle))

    def json(self, job: Job, summary: JobSummary | None) -> bytes:
        """The job as ``JobOut`` serialises it, with its summary of runs."""
        model = self._types.model(job.type) if job.type in self._types else None
        version = (job.updated_at, job.next_run_at, model)
        key = None if summary is None else _summary_key(summary)
        entry = self._entries.get(job.id)
        if entry is not None and entry.version == version:
            if entry.summary != key:  # the same job, runs since: only its summary's part is new
                middle = _summary_json(summary)
                view = memoryview(entry.json)
                entry.json = b"".join((view[:entry.at], middle, view[entry.end:]))
                entry.end = entry.at + len(middle)
                entry.summary = key
                self._weigh(job.id, len(entry.json) + _ENTRY_OVERHEAD)
            return entry.json
        entry = self._write(job, version, summary, key)
        self._keep(job.id, entry, len(entry.json) + _ENTRY_OVERHEAD)
        return entry.json
