"""The domain's values: jobs, runs, events and the policies that govern them.

``Job``, ``Run`` and ``Event`` are slotted dataclasses because the engines make thousands of them a
second; treat them as values and derive changed copies with ``dataclasses.replace``, never mutate an
instance you did not just create. ``JobSpec`` is the validated input from which a job is made (pydantic,
shared by the library and the REST API so field names are the same everywhere).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import FieldError, InvalidJob
from .hookspec import NOTIFY_MAX_BYTES, ChainRule, DateTimeInput, Exclusion, NotifyRule, notify_json
from .ids import new_id
from .retry import RetryPolicy

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "FAILED_RUN_STATUSES",
    "FINISHED_RUN_STATUSES",
    "RESULT_LIMIT",
    "STORE_INT",
    "Event",
    "EventType",
    "Job",
    "JobSpec",
    "JobStatus",
    "JobSummary",
    "MisfirePolicy",
    "OverlapPolicy",
    "Run",
    "RunStatus",
    "Trigger",
    "check_job_names",
    "count_lines",
    "encode_result",
    "evolve",
    "new_run",
]


class JobStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class OverlapPolicy(StrEnum):
    """What to do when a slot comes due while the job's previous run is still queued or running."""

    ALLOW = "allow"  # run both
    FORBID = "forbid"  # record the new slot as skipped
    REPLACE = "replace"  # cancel the running one, start the new one


class MisfirePolicy(StrEnum):
    """What to do with slots older than ``misfire_grace`` when the scheduler gets to them (after an
    outage, a pause of the process, or a long stall). Every slot not run is recorded as ``missed``."""

    FIRE_ONCE = "fire_once"  # one catch-up run for the latest missed slot
    SKIP = "skip"  # run none of them
    FIRE_ALL = "fire_all"  # a catch-up run for each, up to a bound; older ones recorded as missed


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    MISSED = "missed"


ACTIVE_RUN_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
FINISHED_RUN_STATUSES = frozenset(RunStatus) - ACTIVE_RUN_STATUSES
FAILED_RUN_STATUSES = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT})
STORE_INT = (-2**31, 2**31 - 1)
"""The integers every store holds (MySQL's INT: 32-bit signed). A run's exit code from an executor is
checked against it before it is written (the worker): out of it, the run records no code and says why,
rather than a store error failing the write (review-secfix F2)."""


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    RETRY = "retry"
    CATCH_UP = "catch_up"
    CHAIN = "chain"  # started by another job's outcome (its ``then``)


class EventType(StrEnum):
    RUN_QUEUED = "run.queued"
    RUN_STARTED = "run.started"
    RUN_LOG = "run.log"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_TIMED_OUT = "run.timed_out"
    RUN_CANCELLED = "run.cancelled"
    RUN_RETRY_SCHEDULED = "run.retry_scheduled"
    RUN_SKIPPED = "run.skipped"
    RUN_MISSED = "run.missed"
    RUN_CANCEL_REQUESTED = "run.cancel_requested"
    JOB_CREATED = "job.created"
    JOB_UPDATED = "job.updated"
    JOB_DELETED = "job.deleted"
    JOB_PAUSED = "job.paused"
    JOB_RESUMED = "job.resumed"


RUN_EVENT_FOR_STATUS = {
    RunStatus.QUEUED: EventType.RUN_QUEUED,
    RunStatus.RUNNING: EventType.RUN_STARTED,
    RunStatus.SUCCEEDED: EventType.RUN_SUCCEEDED,
    RunStatus.FAILED: EventType.RUN_FAILED,
    RunStatus.TIMED_OUT: EventType.RUN_TIMED_OUT,
    RunStatus.CANCELLED: EventType.RUN_CANCELLED,
    RunStatus.SKIPPED: EventType.RUN_SKIPPED,
    RunStatus.MISSED: EventType.RUN_MISSED,
}


class JobSpec(BaseModel):
    """What a user says about a job when creating or replacing it.

    ``payload`` is checked against the payload model registered for ``type``; ``schedule`` and
    ``timezone`` by :func:`~chronos_core.schedules.parse_schedule`. Times are in seconds.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    type: str = Field(min_length=1, max_length=50)
    payload: dict[str, Any] = Field(default_factory=dict)
    schedule: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="UTC", max_length=64)
    description: str | None = Field(default=None, max_length=2000)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: float | None = Field(default=None, gt=0, le=86400 * 7, description="seconds per attempt")
    overlap: OverlapPolicy = OverlapPolicy.ALLOW
    misfire: MisfirePolicy = MisfirePolicy.FIRE_ONCE
    misfire_grace: float = Field(default=5.0, ge=0, le=86400 * 7,
                                 description="seconds after its slot a run still counts as on time")
    status: JobStatus = JobStatus.ACTIVE
    start_at: DateTimeInput | None = Field(default=None, description=(
        "no slot before this time (with a UTC offset; @every counts from it); not a number"))
    end_at: DateTimeInput | None = Field(default=None, description=(
        "no slot after this time (with a UTC offset); not a number"))
    history_limit: int | None = Field(default=None, ge=1, le=1_000_000,
                                      description="keep at most this many runs of the job")
    notify: list[NotifyRule] = Field(default_factory=list, max_length=20, description=(
        "notifications: [{on: [events], webhook: {...} | email: {...}}]; failed/timed_out are a slot's "
        "final outcome (no retry left)"))
    then: list[ChainRule] = Field(default_factory=list, max_length=20, description=(
        "jobs to run (trigger chain) when a run ends with one of the statuses in on"))
    pause_after_failures: int | None = Field(default=None, ge=1, le=10_000, description=(
        "pause the job after this many failed slots in a row (final outcomes)"))
    alert_after: float | None = Field(default=None, gt=0, le=86400 * 7, description=(
        "seconds: a run still running this long notifies running_long (once; the run goes on)"))
    jitter: float | None = Field(default=None, ge=0, le=86400, description=(
        "seconds: each slot starts at a deterministic offset in [0, jitter] after its nominal time"))
    exclude: list[Exclusion] = Field(default_factory=list, max_length=50, description=(
        "blackouts: time ranges {from, to} (in the job's zone) or cron windows {cron}; slots inside are "
        "recorded skipped (excluded)"))

    @field_validator("notify")
    @classmethod
    def _notify_fits(cls, rules: list[NotifyRule]) -> list[NotifyRule]:
        size = len(notify_json(rules)) if rules else 0
        if size > NOTIFY_MAX_BYTES:
            raise ValueError(f"the notification rules are {size} bytes of JSON; at most {NOTIFY_MAX_BYTES}")
        return rules


def check_job_names(names: Sequence[str], *, index: bool = False) -> None:
    """Refuse, with :class:`InvalidJob` at ``name`` (``(i, "name")`` with ``index``), a job name with
    leading or trailing whitespace. The rule for every store: :class:`JobSpec` strips names as it reads
    them, so only a caller that builds a :class:`Job` itself could give one; and a stored ``'foo '`` next
    to ``'foo'`` would be two jobs on SQLite and memory but one name on MariaDB, whose ``utf8mb4_bin``
    is a PAD SPACE collation (the unique index ignores trailing blanks). Names stored before the rule
    stay readable and deletable."""
    errors = [FieldError((i, "name") if index else ("name",),
                         f"{name!r} has leading or trailing whitespace; a job name has none")
              for i, name in enumerate(names) if name != name.strip()]
    if errors:
        raise InvalidJob(errors)


@dataclass(slots=True, kw_only=True)
class Job:
    """A stored job. ``next_run_at`` is the next slot the scheduler will fire (None: nothing scheduled)."""

    id: str
    name: str
    type: str
    payload: dict[str, Any]
    schedule: str | None
    timezone: str
    retry: RetryPolicy
    timeout: float | None
    overlap: OverlapPolicy
    misfire: MisfirePolicy
    misfire_grace: float
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    next_run_at: datetime | None = None
    description: str | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    history_limit: int | None = None
    notify: list[NotifyRule] = field(default_factory=list)
    then: list[ChainRule] = field(default_factory=list)
    pause_after_failures: int | None = None
    alert_after: float | None = None
    jitter: float | None = None
    exclude: list[Exclusion] = field(default_factory=list)
    paused_reason: str | None = None
    """Why the job is paused when Chronos paused it (``pause_after_failures``); None otherwise."""

    def spec(self) -> JobSpec:
        """The job's definition, as it would be given to create it again."""
        return JobSpec.model_construct(
            name=self.name, type=self.type, payload=self.payload, schedule=self.schedule,
            timezone=self.timezone, description=self.description, retry=self.retry, timeout=self.timeout,
            overlap=self.overlap, misfire=self.misfire, misfire_grace=self.misfire_grace,
            status=self.status, start_at=self.start_at, end_at=self.end_at,
            history_limit=self.history_limit, notify=self.notify, then=self.then,
            pause_after_failures=self.pause_after_failures, alert_after=self.alert_after,
            jitter=self.jitter, exclude=self.exclude,
        )


@dataclass(slots=True, kw_only=True)
class Run:
    """One attempt at one slot of one job.

    ``scheduled_for`` is the slot (for manual runs: when it was triggered); ``due_at`` is when the attempt
    may start (later than the slot for retries). ``(job_id, scheduled_for, attempt)`` is unique.
    ``owner``/``lease_expires_at`` say which worker holds a running attempt and until when.
    """

    id: str
    job_id: str
    scheduled_for: datetime
    trigger: Trigger
    attempt: int
    status: RunStatus
    created_at: datetime
    due_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    output: str = ""
    error: str | None = None
    owner: str | None = None
    lease_expires_at: datetime | None = None
    output_lines: int = 0
    """How many lines the run has printed so far (line numbers start at 1; the last line of ``output``
    is line ``output_lines``; earlier ones may be cut from the stored tail). ``run.log`` events carry
    their line number as ``seq``, so a reader joins the stored tail and the live lines without a gap
    or a repeat."""
    result: Any = None
    """What the attempt returned, a JSON value (a ``python`` job's return value), or None: set by the
    executor (:class:`~chronos_core.ports.ExecutionResult`), at most :data:`RESULT_LIMIT` characters of
    JSON, secrets masked; recorded by ``finish_run``."""

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_RUN_STATUSES


def new_run(job_id: str, scheduled_for: datetime, trigger: Trigger, now: datetime, *, attempt: int = 1,
            status: RunStatus = RunStatus.QUEUED, due_at: datetime | None = None,
            finished_at: datetime | None = None, error: str | None = None) -> Run:
    """A new run (a fresh id, created ``now``): queued by default, due at its slot unless ``due_at``
    says otherwise (a retry); a record (``skipped``/``missed``) gives its status, end and reason. The one
    place runs are made, so every maker fills the same fields."""
    return Run(id=new_id(), job_id=job_id, scheduled_for=scheduled_for, trigger=trigger, attempt=attempt,
               status=status, created_at=now, due_at=scheduled_for if due_at is None else due_at,
               finished_at=finished_at, error=error)


RESULT_LIMIT = 64 * 1024
"""The longest run result kept, in characters of its JSON text. A longer one is not kept (the run's
``result`` stays None) and the run's output says so in a ``[chronos]`` line."""


def encode_result(value: Any, limit: int = RESULT_LIMIT) -> tuple[str | None, str | None]:
    """A run result as JSON text (None for None) and, when it cannot be kept (not JSON, or longer than
    ``limit`` characters), None and the note for the output instead."""
    if value is None:
        return None, None
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, f"[chronos] the result was not kept: not JSON ({exc})"
    if len(text) > limit:
        return None, (f"[chronos] the result ({len(text)} characters of JSON) was not kept: over the "
                      f"limit of {limit}")
    return text, None


def count_lines(output: str) -> int:
    """The lines in an output text as the worker stores it (lines joined by newlines)."""
    return output.count("\n") + 1 if output else 0



@dataclass(slots=True, kw_only=True)
class JobSummary:
    """What a job's runs came to, kept by the store in the same write that records each outcome (never
    recomputed from history): the last attempt that ran to an end, the last success and failure
    (``failed`` or ``timed_out``), and how many failures followed the last success: attempts
    (``consecutive_failures``) and slots whose final attempt failed (``consecutive_failed_slots``, what
    ``pause_after_failures`` counts). A cancelled attempt is the last run but neither a failure nor a
    success."""

    last_run_id: str | None = None
    last_run_status: RunStatus | None = None
    last_run_scheduled_for: datetime | None = None
    last_run_started_at: datetime | None = None
    last_run_finished_at: datetime | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    consecutive_failures: int = 0
    consecutive_failed_slots: int = 0

    def record(self, run_id: str, status: RunStatus, scheduled_for: datetime,
               started_at: datetime | None, finished_at: datetime, final: bool = True) -> None:
        """Fold one finished attempt in (attempts are folded in the order they finished); ``final``: no
        retry follows it (the slot's outcome)."""
        if self.last_run_finished_at is None or finished_at >= self.last_run_finished_at:
            self.last_run_id, self.last_run_status = run_id, status
            self.last_run_scheduled_for, self.last_run_started_at = scheduled_for, started_at
            self.last_run_finished_at = finished_at
        if status is RunStatus.SUCCEEDED:
            self.consecutive_failures = self.consecutive_failed_slots = 0
            if self.last_success_at is None or finished_at > self.last_success_at:
                self.last_success_at = finished_at
        elif status in FAILED_RUN_STATUSES:
            self.consecutive_failures += 1
            if final:
                self.consecutive_failed_slots += 1
            if self.last_failure_at is None or finished_at > self.last_failure_at:
                self.last_failure_at = finished_at


@dataclass(slots=True, kw_only=True)
class Event:
    """Something that happened. ``id`` is assigned by the event bus on publish and orders events; a
    subscriber that saw event ``id`` can resume after it. ``data`` holds the details (for ``run.log``:
    ``line`` and ``stream``; for status events: the run's fields)."""

    type: EventType
    time: datetime
    job_id: str | None = None
    run_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


_T = TypeVar("_T", Job, Run, Event)


def evolve(obj: _T, /, **changes: Any) -> _T:
    """A copy of a ``Job``, ``Run`` or ``Event`` with ``changes`` applied: what ``dataclasses.replace``
    does, for these slotted dataclasses without bases or ``__post_init__`` (a test holds the three to
    that: every field a slot, the same copies, the same ``TypeError`` for a name that is no field).

    Copied slot by slot rather than through ``dataclasses.replace``, which walks the class's ``Field``
    objects and calls ``__init__`` with every field as a keyword: the engines copy a run four or five
    times per execution, and ``dataclasses.replace`` was the largest single cost of a run in memory
    (~14 % of the CPU of 1,000 ``@every 1s`` jobs, py-spy; BENCHMARKS.md). No generated code, no cache."""
    cls = type(obj)
    fields = cls.__dataclass_fields__
    for name in changes:
        if name not in fields:
            raise TypeError(f"{cls.__name__}.__init__() got an unexpected keyword argument {name!r}")
    new = object.__new__(cls)
    for name in cls.__slots__:
        setattr(new, name, getattr(obj, name))
    for name, value in changes.items():
        setattr(new, name, value)
    return new
