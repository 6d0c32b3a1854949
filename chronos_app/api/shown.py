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
registered again masks with its new model); the job's JSON is kept with the summary it was written with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic_core import to_json as _to_json

from chronos_core import Job, JobSummary, JobTypes, Run
from chronos_core.hooks import redact_notify
from chronos_core.operations import Jobs

from .schemas import JOB_OUT_SOURCES, RUN_OUT_SOURCES, JobOut, LastRun, RunOut

__all__ = ["ShownJobs", "job_dict", "page_json", "run_dict", "run_json", "runs_page_json"]

def to_json(value: Any) -> bytes:
    # field names, not aliases, as ``model_dump_json()`` writes them (an exclusion's ``from_``)
    return _to_json(value, by_alias=False)


_NO_SUMMARY = JobSummary()
_SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(JobSummary))
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


def page_json(items: Sequence[bytes], next_cursor: str | None) -> bytes:
    """A ``JobPage`` (or any ``{"items": [...], "next_cursor": ...}`` page) of items written already."""
    return b'{"items":[' + b",".join(items) + b'],"next_cursor":' + to_json(next_cursor) + b"}"


_Parts = tuple[dict[str, Any], list[dict[str, Any]], list[datetime]]


@dataclasses.dataclass(slots=True)
class _Entry:
    version: tuple[datetime, datetime | None, object]  # updated_at, next_run_at, payload model
    parts: _Parts
    summary: tuple[Any, ...] | None = None
    json: bytes = b""


class ShownJobs:
    """Jobs as shown, kept per job version (at most ``max_entries`` jobs; the oldest go first)."""

    def __init__(self, types: JobTypes, max_entries: int = 20_000) -> None:
        self._types = types
        self.max_entries = max_entries
        self._entries: dict[str, _Entry] = {}

    def _entry(self, job: Job) -> _Entry:
        model = self._types.model(job.type) if job.type in self._types else None
        version = (job.updated_at, job.next_run_at, model)
        entry = self._entries.get(job.id)
        if entry is None or entry.version != version:
            parts = (self._types.redact(job.type, job.payload), redact_notify(job.notify),
                     Jobs.next_runs(job))
            entry = _Entry(version, parts)
            if job.id not in self._entries and len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[job.id] = entry
        return entry

    def parts(self, job: Job) -> _Parts:
        """(masked payload, masked notify rules, next fire times) of ``job``."""
        return self._entry(job).parts

    def json(self, job: Job, summary: JobSummary | None) -> bytes:
        """The job as ``JobOut`` serialises it, with its summary of runs."""
        entry = self._entry(job)
        key = None if summary is None else tuple(getattr(summary, f) for f in _SUMMARY_FIELDS)
        if not entry.json or entry.summary != key:
            payload, notify, next_runs = entry.parts
            entry.json = to_json(job_dict(job, payload, notify, summary, next_runs))
            entry.summary = key
        return entry.json

    def forget(self, job_id: str) -> None:
        self._entries.pop(job_id, None)
