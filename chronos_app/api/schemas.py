"""The API's DTOs: pydantic models for what goes over the wire (and into the OpenAPI document).

Requests reuse the core's ``JobSpec`` so field names are the same in Python and over HTTP. Responses are
built from the domain objects here, with secrets masked by the job type's payload model.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chronos_core import Event, Job, JobSummary, JobTypes, Run
from chronos_core.hooks import Notice, NoticeKind, NoticeStatus, redact_notify, shown_webhook_url
from chronos_core.hookspec import ChainRule, Exclusion
from chronos_core.models import JobStatus, MisfirePolicy, OverlapPolicy, RunStatus, Trigger
from chronos_core.retry import RetryPolicy

__all__ = [
    "ApplyOut",
    "EventOut",
    "FieldProblem",
    "Health",
    "HistoryDeleted",
    "JobOut",
    "JobPage",
    "JobPatch",
    "JobsApply",
    "LastRun",
    "NoticeOut",
    "NoticePage",
    "Problem",
    "Readiness",
    "RunOut",
    "RunPage",
    "SchedulePreview",
    "Stats",
    "StatusChange",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LastRun(_Out):
    """The job's last attempt that ran to an end."""

    id: str
    status: RunStatus
    scheduled_for: datetime
    finished_at: datetime
    duration: float | None = Field(description="seconds from its start to its end")


class JobOut(_Out):
    """A job as stored; ``payload`` has its secrets replaced by ``***``. The fields from ``last_run`` on
    summarize its runs: the engines keep them with every outcome (``next_runs``: the next fire times)."""

    id: str
    name: str
    type: str
    payload: dict[str, Any]
    schedule: str | None
    timezone: str
    description: str | None
    retry: RetryPolicy
    timeout: float | None
    overlap: OverlapPolicy
    misfire: MisfirePolicy
    misfire_grace: float
    status: JobStatus
    start_at: datetime | None
    end_at: datetime | None
    history_limit: int | None
    notify: list[dict[str, Any]] = Field(default_factory=list, description=(
        "notifications (webhook secrets and header values shown as ***)"))
    then: list[ChainRule] = Field(default_factory=list)
    pause_after_failures: int | None = None
    alert_after: float | None = None
    jitter: float | None = None
    exclude: list[Exclusion] = Field(default_factory=list)
    paused_reason: str | None = Field(default=None, description=(
        "why Chronos paused the job (pause_after_failures); null when running or paused by hand"))
    next_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_run: LastRun | None = Field(description="the last attempt that ran to an end (null: none yet)")
    last_success_at: datetime | None
    last_failure_at: datetime | None = Field(description="when the last failed or timed-out attempt ended")
    consecutive_failures: int = Field(description="failed or timed-out attempts since the last success")
    consecutive_failed_slots: int = Field(default=0, description=(
        "slots whose final attempt failed since the last success (what pause_after_failures counts)"))
    next_runs: list[datetime] = Field(description="the next 3 fire times (none while paused)")

    @classmethod
    def of(cls, job: Job, types: JobTypes, summary: JobSummary | None = None,
           next_runs: list[datetime] | None = None) -> JobOut:
        """The job as shown: its fields as stored (``_JOB_COPIED``), the payload and notifications with
        their secrets masked, the summary's fields, the last run and the next fire times. Built without
        validation: every value comes from a stored job, already valid. (The API writes the same JSON
        without the model: ``shown.ShownJobs``.)"""
        s = summary or _NO_SUMMARY
        last = None
        if s.last_run_id is not None and s.last_run_status is not None and s.last_run_finished_at:
            started = s.last_run_started_at
            last = LastRun.model_construct(
                id=s.last_run_id, status=s.last_run_status, scheduled_for=s.last_run_scheduled_for,
                finished_at=s.last_run_finished_at,
                duration=None if started is None else (s.last_run_finished_at - started).total_seconds())
        values = {name: getattr(job, name) for name in _JOB_COPIED}
        values.update({name: getattr(s, name) for name in _SUMMARY_COPIED})
        return cls.model_construct(**values, payload=types.redact(job.type, job.payload),
                                   notify=redact_notify(job.notify), last_run=last, next_runs=next_runs or [])


_NO_SUMMARY = JobSummary()
_JOB_SHOWN = frozenset({"payload", "notify"})  # masked
_JOB_COPIED = tuple(f.name for f in dataclasses.fields(Job) if f.name in JobOut.model_fields
                    and f.name not in _JOB_SHOWN)
"""The fields of a job shown as they are stored: every field of ``Job`` that ``JobOut`` declares."""
_SUMMARY_COPIED = tuple(f.name for f in dataclasses.fields(JobSummary) if f.name in JobOut.model_fields)
"""The fields of a job's summary shown as they are (the last run's are shown as ``last_run``)."""
JOB_OUT_SOURCES = {"job": _JOB_COPIED, "masked": tuple(sorted(_JOB_SHOWN)), "summary": _SUMMARY_COPIED,
                   "derived": ("last_run", "next_runs")}
"""Where each field of ``JobOut`` comes from (a test checks that every field has exactly one)."""


class RunOut(_Out):
    """One attempt at one slot of a job."""

    id: str
    job_id: str
    scheduled_for: datetime
    trigger: Trigger
    attempt: int
    status: RunStatus
    created_at: datetime
    due_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    output: str = Field(description="the tail of the output (secrets masked)")
    output_lines: int = Field(description="the number of the last line in output, so far for a running "
                                          "run (its run.log events carry the numbers as seq)")
    error: str | None
    result: Any = Field(default=None, description=(
        "what the attempt returned, a JSON value (a python job's return value; at most 64 KiB of JSON, "
        "secrets masked), null for none"))
    start_offset: float = Field(default=0.0, description=(
        "seconds from scheduled_for (the nominal slot) to due_at: the job's jitter for a first attempt, "
        "the retry's wait for a later one"))
    parent_run_id: str | None = Field(default=None, description=(
        "the run whose outcome started this one (trigger chain); GET /runs/{id} only"))
    children: list[str] = Field(default_factory=list, description=(
        "runs this run's outcome started (the job's then); GET /runs/{id} only"))

    @classmethod
    def of(cls, run: Run, parent_run_id: str | None = None, children: list[str] | None = None) -> RunOut:
        """The run's fields as stored (see ``_RUN_COPIED``), its start offset, and its links. Built
        without validation: every value comes from a stored run, already valid."""
        return cls.model_construct(**{name: getattr(run, name) for name in _RUN_COPIED},
                                   start_offset=(run.due_at - run.scheduled_for).total_seconds(),
                                   parent_run_id=parent_run_id, children=children or [])


_RUN_COPIED = tuple(f.name for f in dataclasses.fields(Run) if f.name in RunOut.model_fields)
"""Every field of ``Run`` that ``RunOut`` declares (not the lease: owner, lease_expires_at)."""
RUN_OUT_SOURCES = {"run": _RUN_COPIED, "derived": ("start_offset", "parent_run_id", "children")}


class NoticeOut(_Out):
    """Something a run's outcome set off - a notification, a chained run, an auto-pause - and how its
    delivery went (every attempt in ``tries``)."""

    id: str
    kind: NoticeKind
    event: str = Field(description="failed, timed_out, succeeded, recovered, missed, skipped, running_long, "
                                   "paused; for a chain the status that set it off")
    channel: str = Field(description="webhook, email, chain or pause")
    target: dict[str, Any] = Field(description="where: the webhook url (secrets masked), the email "
                                               "recipients, the chained job, the pause's reason")
    job_id: str
    run_id: str | None
    status: NoticeStatus
    attempts: int
    tries: list[dict[str, Any]] = Field(description="each attempt: {at, ok, code, error}")
    last_error: str | None
    last_code: int | None
    created_at: datetime
    due_at: datetime = Field(description="when the next attempt is due (pending)")
    finished_at: datetime | None
    result: str | None = Field(description="the chained run's id, the response, the pause's reason")

    @classmethod
    def of(cls, n: Notice) -> NoticeOut:
        if n.kind is NoticeKind.NOTIFY:
            channel = next(iter(n.target), "")
            inner = n.target.get(channel) or {}
            target = ({"url": shown_webhook_url(str(inner.get("url", ""))),
                       "format": inner.get("format", "json")}
                      if channel == "webhook" else {"to": inner.get("to", [])})
        else:
            channel, target = n.kind.value, dict(n.target)
        return cls(id=n.id, kind=n.kind, event=n.event, channel=channel, target=target, job_id=n.job_id,
                   run_id=n.run_id, status=n.status, attempts=n.attempts, tries=n.tries,
                   last_error=n.last_error, last_code=n.last_code, created_at=n.created_at,
                   due_at=n.due_at, finished_at=n.finished_at, result=n.result)


class NoticePage(_Out):
    items: list[NoticeOut]


class JobPage(_Out):
    items: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?after= for the next page; null on the last")


class RunPage(_Out):
    items: list[RunOut]
    next_cursor: str | None = Field(description="pass as ?before= for the next (older) page")


class JobPatch(BaseModel):
    """A JSON merge patch of a job's definition (RFC 7396): any of the fields of a job, ``null`` to reset
    one to its default."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "example": {"schedule": "0 3 * * *", "retry": {"max_attempts": 5}, "description": None}})


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["active", "paused", "resume", "restart"] = Field(
        description="'resume' and 'restart' are other names of 'active'")


class JobCount(_Out):
    job_id: str
    name: str | None = Field(description="null if the job was deleted since")
    runs: int = Field(description="runs that ended in the window (for failing jobs: failed or timed out)")
    consecutive_failures: int | None = Field(default=None, description="for failing jobs: the job's "
                                                                      "failures since its last success")


class WindowStats(_Out):
    since: datetime = Field(description="counted from this minute on")
    total: int
    by_status: dict[str, int] = Field(description="runs that ended, by status (every final status)")
    busiest: list[JobCount] = Field(description="the jobs with the most runs")
    failing: list[JobCount] = Field(description="the jobs with the most failed or timed-out runs")


class Stats(_Out):
    """Counts for a dashboard; cheap to poll (outcomes are counted per minute as they are written)."""

    time: datetime
    jobs: dict[str, int] = Field(description="jobs by status, and total")
    runs: dict[str, int] = Field(description="runs queued and running now")
    last_hour: WindowStats
    last_day: WindowStats


class JobsApply(BaseModel):
    """A set of jobs to make true (jobs as code): created or updated by name, the others left alone, or
    deleted with ``prune``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"jobs": [
        {"name": "nightly", "type": "http", "schedule": "0 2 * * *",
         "payload": {"url": "https://example.com/hooks/nightly", "method": "POST"}}], "prune": False}})

    jobs: list[dict[str, Any]] = Field(description="job definitions, as POST /jobs takes them; names unique")
    prune: bool = Field(default=False, description="delete every job not in the set")


class ApplyOut(_Out):
    """What an apply did (or, with ``dry_run``, would do), by job name."""

    created: list[str]
    updated: list[str]
    unchanged: list[str]
    deleted: list[str]
    dry_run: bool


class HistoryDeleted(_Out):
    deleted: int = Field(description="how many finished runs were deleted (active runs stay)")


class SchedulePreview(_Out):
    schedule: str
    timezone: str
    times: list[datetime] = Field(description="the next fire times, UTC")
    excluded: list[datetime] = Field(default_factory=list, description=(
        "with job_id: those of times the job's exclude skips (recorded skipped, not run)"))
    offsets: list[float] = Field(default_factory=list, description=(
        "with job_id: each time's jitter offset in seconds (the run is due that much later)"))


class Health(_Out):
    status: Literal["ok"]


class Readiness(_Out):
    status: Literal["ok"]
    store: Literal["ok"]


class EventOut(_Out):
    """The ``data`` of one server-sent event (the SSE ``event:`` field repeats ``type``)."""

    id: str | None
    type: str
    time: datetime
    job_id: str | None
    run_id: str | None
    data: dict[str, Any]

    @classmethod
    def of(cls, event: Event) -> EventOut:
        return cls(id=event.id, type=event.type.value, time=event.time, job_id=event.job_id,
                   run_id=event.run_id, data=event.data)


class FieldProblem(BaseModel):
    pointer: str = Field(description="RFC 6901 JSON pointer to the field (for query parameters: /name)")
    reason: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] | None = Field(default=None, description="one entry per invalid field")
