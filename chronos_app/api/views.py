"""What the dashboard needs beyond the operator API: what the caller's token may do, the job types with
their payload schemas (for a form per type), and per job a digest (its schedule in words and its last
outcomes). Every answer here is plain API too (documented, tested through HTTP), for scripts as well."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import UTC, datetime, time, timedelta
from typing import Any

from cron_descriptor import CasingTypeEnum, ExpressionDescriptor, Options
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chronos_core import Job, JobNotFound, JobSpec, RunStatus, parse_schedule
from chronos_core.schedules import fire_times, parse_timezone

from .context import Op, api
from .inputs import parse_query
from .schemas import _Out

__all__ = ["describe_schedule", "dst_note", "view_ops"]

_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_IDS = r"^[0-9a-f-]{36}(,[0-9a-f-]{36})*$"
OUTCOMES = 20
_MACRO_WORDS = {"@yearly": "once a year, on 1 January at 00:00",
                "@annually": "once a year, on 1 January at 00:00",
                "@monthly": "on the 1st of every month at 00:00", "@weekly": "every Sunday at 00:00",
                "@daily": "every day at 00:00", "@midnight": "every day at 00:00",
                "@hourly": "every hour, on the hour"}


@functools.lru_cache(maxsize=1024)
def describe_schedule(expression: str | None, timezone: str = "UTC") -> str:
    """The schedule in words, e.g. "At 09:00, Monday through Friday (Europe/Berlin)"; a cron expression
    through cron-descriptor (5 fields, or 6 with seconds first as Chronos reads them)."""
    if expression is None or not expression.strip():
        return "manual only (no schedule)"
    text = " ".join(expression.split())
    head, _, rest = text.partition(" ")
    zone = f" ({timezone})"
    if head.lower() == "@every":
        return f"every {rest}"
    if head.lower() == "@at":
        return f"once, at {rest}" + ("" if any(c in rest[10:] for c in "Z+-") else zone)
    if head.lower() in _MACRO_WORDS:
        return _MACRO_WORDS[head.lower()] + zone
    options = Options()
    options.use_24hour_time_format = True
    options.casing_type = CasingTypeEnum.Sentence
    options.verbose = False
    try:
        words = ExpressionDescriptor(text, options).get_description()
    except Exception:  # cron-descriptor does not know every croniter extension (e.g. 'L', 'H')
        return text
    return f"{words}{zone}"


def dst_note(at: datetime, timezone: str) -> str | None:
    """When the zone's UTC offset changes on the local day of ``at`` (a DST day): which change."""
    tz = parse_timezone(timezone)
    local = at.astimezone(tz)
    start = datetime.combine(local.date(), time(0), tz)
    end = datetime.combine(local.date() + timedelta(days=1), time(0), tz)
    before, after = start.utcoffset(), end.utcoffset()
    if before == after or before is None or after is None:
        return None

    def hours(offset: timedelta) -> str:
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

    return (f"the clocks change this day in {timezone} (UTC{hours(before)} → UTC{hours(after)}): "
            "a wall time may be skipped or happen twice")


# --------------------------------------------------------------------------------------- auth/me


class AuthInfo(_Out):
    """What the token this request carries may do."""

    auth_enabled: bool = Field(description="false: no tokens are configured (loopback only)")
    can_write: bool = Field(description="false for a read-only token: only GET requests are allowed")


async def auth_me(request: Request) -> Response:
    ctx = api(request)
    readonly = bool(request.scope.get("chronos.readonly", False))
    return _json(AuthInfo(auth_enabled=ctx.settings.auth_enabled, can_write=not readonly))


# ------------------------------------------------------------------------------------- job types


class JobTypeOut(_Out):
    name: str
    description: str = Field(description="the payload model's docstring")
    enabled: bool = Field(description="false when this server refuses the type (shell with "
                                      "CHRONOS_ALLOW_SHELL off, or no executor)")
    payload_schema: dict[str, Any] = Field(description="JSON Schema of the payload (its $defs inline)")


class JobTypeList(_Out):
    items: list[JobTypeOut]
    job_schema: dict[str, Any] = Field(description="JSON Schema of a job's definition (JobSpec); its payload "
                                                   "is the type's payload_schema")


async def job_types(request: Request) -> Response:
    chronos = api(request).chronos
    items = []
    for name in chronos.job_types.names:
        model = chronos.job_types.model(name)
        enabled = name in chronos.executors and (name != "shell" or chronos.allow_shell)
        items.append(JobTypeOut(name=name, description=(model.__doc__ or "").strip(), enabled=enabled,
                                payload_schema=model.model_json_schema(mode="validation")))
    return _json(JobTypeList(items=items, job_schema=JobSpec.model_json_schema(mode="validation")))


# --------------------------------------------------------------------------------------- digests


class DigestQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: str = Field(max_length=37 * 500, pattern=_IDS, description="comma-separated job ids (at most 500)")


class Outcome(_Out):
    run_id: str
    status: RunStatus
    scheduled_for: datetime
    finished_at: datetime | None


class JobDigest(_Out):
    job_id: str
    schedule_text: str = Field(description="the schedule in words, with its time zone")
    outcomes: list[Outcome] = Field(description=f"the job's last {OUTCOMES} runs, oldest first")


class DigestList(_Out):
    items: list[JobDigest] = Field(description="in the order asked; ids of jobs that do not exist are "
                                               "left out")


async def job_digests(request: Request) -> Response:
    chronos = api(request).chronos
    q = parse_query(request, DigestQuery)
    ids = list(dict.fromkeys(q.ids.split(",")))[:500]

    async def get(job_id: str) -> Job | None:
        with contextlib.suppress(JobNotFound):
            return await chronos.jobs.get(job_id)
        return None

    jobs = {j.id: j for j in await asyncio.gather(*(get(jid) for jid in ids)) if j is not None}
    found = [jid for jid in ids if jid in jobs]
    histories = await asyncio.gather(*(chronos.runs.list(job_id=jid, limit=OUTCOMES) for jid in found))
    items = []
    for job_id, runs in zip(found, histories, strict=True):
        job = jobs[job_id]
        items.append(JobDigest(job_id=job_id, schedule_text=describe_schedule(job.schedule, job.timezone),
                               outcomes=[Outcome(run_id=r.id, status=r.status, scheduled_for=r.scheduled_for,
                                                 finished_at=r.finished_at) for r in reversed(runs)]))
    return _json(DigestList(items=items))


# ------------------------------------------------------------------------------ schedule in words


class DescribeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: str = Field(default="", max_length=200, description="a schedule expression, as in a job")
    timezone: str = Field(default="UTC", max_length=64)
    count: int = Field(default=5, ge=1, le=20)


class FireTime(_Out):
    at: datetime = Field(description="UTC")
    dst: str | None = Field(description="set when the zone's clocks change that local day")


class ScheduleDescription(_Out):
    schedule: str
    timezone: str
    description: str = Field(description="the schedule in words")
    times: list[FireTime] = Field(description="the next fire times")


async def describe(request: Request) -> Response:
    """For a form's live preview: the words and the next fire times with their DST days flagged (the same
    422 field errors as creating a job with this schedule)."""
    q = parse_query(request, DescribeQuery)
    schedule = parse_schedule(q.schedule or None, q.timezone)
    times = [FireTime(at=t, dst=dst_note(t, q.timezone))
             for t in fire_times(schedule, datetime.now(UTC), q.count)]
    return _json(ScheduleDescription(schedule=q.schedule, timezone=q.timezone,
                                     description=describe_schedule(q.schedule, q.timezone), times=times))


def _json(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


def view_ops() -> list[Op]:
    return [
        Op("GET", "/auth/me", auth_me, "What the caller's token may do", 200, AuthInfo, "auth"),
        Op("GET", "/job-types", job_types, "The job types this server runs, with their payload schemas", 200,
           JobTypeList, "jobs"),
        Op("GET", "/job-digests", job_digests, "Per job: the schedule in words and the last outcomes", 200,
           DigestList, "jobs", query=DigestQuery, errors=(422,)),
        Op("GET", "/schedules/describe", describe,
           "A schedule in words and its next fire times, DST days flagged", 200, ScheduleDescription,
           "schedules", query=DescribeQuery, errors=(422,)),
    ]
