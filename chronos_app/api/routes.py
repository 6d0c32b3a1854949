"""The REST handlers: DTO in, ``chronos_core.operations`` call, DTO out. No rules live here."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from chronos_core import (
    Job,
    JobNotFound,
    JobSpec,
    JobStatus,
    RunStatus,
    StoreUnavailable,
    Trigger,
    parse_schedule,
)
from chronos_core.errors import FieldError, InvalidArgument, InvalidJob
from chronos_core.filters import enum_set
from chronos_core.payloads import field_errors
from chronos_core.planning import excluded_by, jitter_offset
from chronos_core.ports import RunCounts
from chronos_core.schedules import fire_times

from .context import ApiContext, Op, api
from .inputs import parse_query, read_json
from .metrics import CONTENT_TYPE
from .problems import InvalidParameters
from .schemas import (
    ApplyOut,
    Health,
    HistoryDeleted,
    JobCount,
    JobOut,
    JobPage,
    JobPatch,
    JobsApply,
    NoticeOut,
    NoticePage,
    Readiness,
    RunOut,
    RunPage,
    SchedulePreview,
    Stats,
    StatusChange,
    WindowStats,
)
from .shown import page_json, run_json

__all__ = ["OPS"]

_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"  # ids are UUIDv7 text
log = logging.getLogger("chronos.api")
_RUN_STATUSES = ", ".join(s.value for s in RunStatus)
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _date_time_text(value: Any) -> Any:
    # pydantic also takes a number ("0.0", "1700000000") as Unix seconds; the document says date-time
    # (RFC 3339), and a number in a query is more likely a mistake than a time: refuse it
    if isinstance(value, str) and not _DATE_TIME.match(value):
        raise ValueError("expected an RFC 3339 date-time with an offset, e.g. 2027-01-01T09:00:00Z")
    return value


def _in_utc_range(value: datetime) -> datetime:
    # a store compares in UTC (the SQL store binds UTC): 9999-12-31T23:00:00-05:00 and
    # 0001-01-01T00:30:00+01:00 have no UTC time, and were a 500 there (review-secattack F3). As a job's
    # start_at/end_at are refused (Jobs.validate)
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of the supported range (years 1-9999 in UTC)") from None
    return value


QueryTime = Annotated[AwareDatetime, BeforeValidator(_date_time_text), AfterValidator(_in_utc_range)]


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    type: str | None = Field(default=None, max_length=50)
    name: str | None = Field(default=None, max_length=200,
                             description="a prefix: the jobs whose name starts with this (exactly, case "
                                         "included; an exact name is GET /jobs?name=X and a check of the "
                                         "result's names)")
    last_status: str | None = Field(default=None, max_length=200,
                                    description="comma-separated statuses of the job's last run, e.g. "
                                                "failed,timed_out")
    after: str | None = Field(default=None, pattern=_ID, description="cursor: next_cursor of a page")
    limit: int = Field(default=100, ge=1, le=500)


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(default=None, max_length=200,
                               description=f"comma-separated run statuses ({_RUN_STATUSES})")
    before: str | None = Field(default=None, pattern=_ID, description="cursor: next_cursor of a page")
    limit: int = Field(default=50, ge=1, le=500)


class RunListQuery(HistoryQuery):
    job_id: str | None = Field(default=None, pattern=_ID, description="runs of this job only")
    trigger: str | None = Field(default=None, max_length=100,
                                description="comma-separated triggers (schedule, manual, retry, catch_up)")
    since: QueryTime | None = Field(default=None, description="scheduled_for at or after this time")
    until: QueryTime | None = Field(default=None, description="scheduled_for at or before this time")


class LogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    follow: bool = Field(default=False, description="keep the response open and send each new line until "
                                                    "the run ends (like kubectl logs -f)")


class PreviewQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: str | None = Field(default=None, max_length=200, description=(
        "a schedule expression, as in a job (or job_id)"))
    timezone: str = Field(default="UTC", max_length=64)
    count: int = Field(default=5, ge=1, le=100)
    job_id: str | None = Field(default=None, max_length=64, description=(
        "preview this job's schedule in its zone, marking the slots its exclude skips (excluded) and "
        "giving each slot's jitter offset"))


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # pydantic-core writes the JSON itself: no dict of the whole answer first, then json.dumps of it
    return Response(model.model_dump_json(by_alias=True), status_code=status, headers=headers,
                    media_type="application/json")


def _statuses(text: str | None, name: str = "status") -> set[RunStatus] | None:
    return enum_set(RunStatus, text, name, "run status", error=InvalidParameters)


def _triggers(text: str | None) -> set[Trigger] | None:
    return enum_set(Trigger, text, "trigger", "trigger", error=InvalidParameters)


async def _job_outs(ctx: ApiContext, jobs: Sequence[Job]) -> list[bytes]:
    """Jobs as shown (JSON of ``JobOut``): with their summaries (one store read for the page) and next
    fire times."""
    summaries = await ctx.chronos.jobs.summaries(jobs)
    return [ctx.shown.json(job, summaries.get(job.id)) for job in jobs]


async def _job_out(ctx: ApiContext, job: Job, status: int = 200, headers: dict[str, str] | None = None
                   ) -> Response:
    return _raw((await _job_outs(ctx, [job]))[0], status, headers)


def _raw(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An answer written as JSON already (``shown``: the same bytes as its model would write)."""
    return Response(body, status_code=status, headers=headers, media_type="application/json")


# ---------------------------------------------------------------------------------------- health


async def jobs_health(request: Request) -> Response:
    return _json(Health(status="ok"))


async def monitor_health(request: Request) -> Response:
    return _json(Health(status="ok"))


async def readiness(request: Request) -> Response:
    """503 (problem) when the store does not answer. ``/ready`` is public (no token), so the problem
    says only that: the driver's message names the store's account and host, and the service's address
    as the server sees it (``Access denied for user 'chronos'@'10.0.3.7'``; review-secattack F4). The
    message goes to the log (it never holds a statement's parameters: ``driver_detail``), at most once
    a minute while the store stays down (``ReadinessLog``)."""
    ctx = api(request)
    try:
        await ctx.chronos.store.ping()
    except Exception as exc:  # StoreUnavailable, or a driver error the adapter did not translate
        # (rate-limited: /ready is public and asked often; review-secfix I1)
        ctx.readiness_log.failed(str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__)
        raise StoreUnavailable("the store did not answer (the service's log says why)") from None
    ctx.readiness_log.ready()
    return _json(Readiness(status="ok", store="ok"))


async def metrics(request: Request) -> Response:
    ctx = api(request)
    return Response(await ctx.metrics.render(ctx.chronos), media_type=CONTENT_TYPE)


# ------------------------------------------------------------------------------------------ jobs


async def create_job(request: Request) -> Response:
    ctx = api(request)
    data = await read_json(request, ctx.settings.max_body_bytes)

    async def create() -> Response:
        job = await ctx.chronos.jobs.create(data)
        # a job created this moment has no runs to summarise: no store read for its (empty) summary
        return _raw(ctx.shown.json(job, None), 201, {"Location": f"/jobs/{job.id}"})

    key = request.headers.get("idempotency-key")
    if not key:
        return await create()
    if len(key) > 255:
        raise InvalidArgument.single(("Idempotency-Key",), "at most 255 characters")
    scope = request.scope.get("chronos.token_id", "")

    async def replay(status: int, headers: list[tuple[str, str]]) -> Response:
        """The first answer was too large to keep: the job it created, as it is now."""
        location = dict(headers).get("location", "")
        job = await ctx.chronos.jobs.get(location.rsplit("/", 1)[-1])
        return _json(JobOut.of(job, ctx.chronos.job_types), status, {"Location": location})

    return await ctx.idempotency.run(f"{scope}:{key}", data, create, request.url.path, replay)


class ApplyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: bool = Field(default=False, description="only say what would change")


async def apply_jobs(request: Request) -> Response:
    ctx = api(request)
    q = parse_query(request, ApplyQuery)
    data = await read_json(request, ctx.settings.max_body_bytes)
    try:
        body = JobsApply.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None
    try:
        result = await ctx.chronos.jobs.apply(body.jobs, prune=body.prune, dry_run=q.dry_run)
    except InvalidJob as exc:  # located within the set: /jobs/3/schedule
        raise InvalidJob([FieldError(("jobs", *e.loc), e.reason) for e in exc.errors]) from None
    return _json(ApplyOut(created=result.created, updated=result.updated, unchanged=result.unchanged,
                          deleted=result.deleted, dry_run=result.dry_run))


async def list_jobs(request: Request) -> Response:
    ctx = api(request)
    q = parse_query(request, JobListQuery)
    last_status = _statuses(q.last_status, "last_status")
    page = ctx.pages.page(request, "jobs", q)  # the store's stamp, before the reads (pages.py)
    if page.body is not None:
        return _raw(page.body)
    # the jobs with their summaries in one store read (one query on SQL)
    listed = await ctx.chronos.jobs.list_with_summaries(status=q.status, type=q.type, name=q.name,
                                                        after=q.after, limit=q.limit + 1,
                                                        last_status=last_status)
    more = len(listed) > q.limit
    listed = listed[:q.limit]
    shown = ctx.shown.json
    return _raw(page.keep(page_json([shown(job, summary) for job, summary in listed],
                                    listed[-1][0].id if more else None)))  # a JobPage


async def get_job(request: Request) -> Response:
    ctx = api(request)
    job = await ctx.chronos.jobs.get(request.path_params["job_id"])
    return await _job_out(ctx, job)


# what a job as shown has beyond its definition: ignored in a PUT or PATCH body (a job read with GET
# can be written back as it is), except ``id``, which must be the job's own
SERVER_OWNED = frozenset(JobOut.model_fields) - frozenset(JobSpec.model_fields)


def _definition(data: object, job_id: str) -> object:
    if not isinstance(data, dict):
        return data  # the validation says what is wrong with it
    if "id" in data and data["id"] != job_id:
        raise InvalidJob.single(("id",), f"is not the id of the job in the URL ({job_id}); leave it out")
    return {k: v for k, v in data.items() if k not in SERVER_OWNED}


async def replace_job(request: Request) -> Response:
    """The whole definition; a job as GET shows it is accepted as it is (see SERVER_OWNED)."""
    ctx = api(request)
    job_id = request.path_params["job_id"]
    data = await read_json(request, ctx.settings.max_body_bytes)
    job = await ctx.chronos.jobs.update(job_id, _definition(data, job_id))  # type: ignore[arg-type]
    return await _job_out(ctx, job)


async def patch_job(request: Request) -> Response:
    """A JSON merge patch (RFC 7396) of the job's definition: only the fields it names change."""
    ctx = api(request)
    job_id = request.path_params["job_id"]
    data = await read_json(request, ctx.settings.max_body_bytes)
    if not isinstance(data, dict):
        raise InvalidJob.single((), "a merge patch of a job is a JSON object of the fields to change")
    job = await ctx.chronos.jobs.patch(job_id, _definition(data, job_id))  # type: ignore[arg-type]
    return await _job_out(ctx, job)


async def delete_job(request: Request) -> Response:
    ctx = api(request)
    job_id = request.path_params["job_id"]
    await ctx.chronos.jobs.delete(job_id)
    ctx.shown.forget(job_id)  # its entry would stay until pushed out by others
    return Response(status_code=204)


async def set_job_status(request: Request) -> Response:
    ctx = api(request)
    data = await read_json(request, ctx.settings.max_body_bytes)
    try:
        change = StatusChange.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(field_errors(exc)) from None
    status = JobStatus.PAUSED if change.status == "paused" else JobStatus.ACTIVE  # resume, restart: active
    job = await ctx.chronos.jobs.set_status(request.path_params["job_id"], status)
    return await _job_out(ctx, job)


async def job_history(request: Request) -> Response:
    ctx = api(request)
    q = parse_query(request, HistoryQuery)
    statuses = _statuses(q.status)
    page = ctx.pages.page(request, "history", q)  # the store's stamp, before the reads (pages.py)
    if page.body is not None:
        return _raw(page.body)
    runs = await ctx.chronos.jobs.history(request.path_params["job_id"], status=statuses,
                                          before=q.before, limit=q.limit + 1)
    more = len(runs) > q.limit
    runs = runs[:q.limit]
    return _raw(page.keep(ctx.shown_runs.page(runs, runs[-1].id if more else None)))  # a RunPage


async def delete_job_history(request: Request) -> Response:
    deleted = await api(request).chronos.jobs.delete_history(request.path_params["job_id"])
    return _json(HistoryDeleted(deleted=deleted))


async def run_job_now(request: Request) -> Response:
    run = await api(request).chronos.jobs.trigger(request.path_params["job_id"])
    return _raw(run_json(run), 202, {"Location": f"/runs/{run.id}"})


# ------------------------------------------------------------------------------------------ runs


async def list_runs(request: Request) -> Response:
    ctx = api(request)
    q = parse_query(request, RunListQuery)
    runs = await ctx.chronos.runs.list(job_id=q.job_id, status=_statuses(q.status), before=q.before,
                                       limit=q.limit + 1, trigger=_triggers(q.trigger), since=q.since,
                                       until=q.until)
    more = len(runs) > q.limit
    runs = runs[:q.limit]
    return _raw(ctx.shown_runs.page(runs, runs[-1].id if more else None))  # a RunPage


async def run_log(request: Request) -> Response:
    """The run's output as plain text; ``?follow=true`` keeps sending new lines until the run ends."""
    ctx = api(request)
    q = parse_query(request, LogQuery)
    lines = ctx.chronos.runs.follow(request.path_params["run_id"], follow=q.follow)
    first: list[str] = []
    try:  # the first line (or the end) before the answer starts: a missing run is a 404, not a 200
        first.append(await anext(lines))
    except StopAsyncIteration:
        pass

    async def body() -> AsyncIterator[bytes]:
        try:
            for line in first:
                yield (line + "\n").encode()
            async for line in lines:
                yield (line + "\n").encode()
        finally:
            await lines.aclose()

    if not q.follow:
        text = "".join([chunk.decode() async for chunk in body()])
        return Response(text, media_type="text/plain; charset=utf-8")
    return StreamingResponse(body(), media_type="text/plain; charset=utf-8",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def get_run(request: Request) -> Response:
    runs = api(request).chronos.runs
    run = await runs.get(request.path_params["run_id"])
    parent, children = await runs.links(run)
    return _raw(run_json(run, parent, children))


async def run_notifications(request: Request) -> Response:
    notices = await api(request).chronos.runs.notices(request.path_params["run_id"])
    return _json(NoticePage(items=[NoticeOut.of(n) for n in notices]))


async def cancel_run(request: Request) -> Response:
    """200 with the cancelled run when it had not started; 202 when a worker was asked to stop it."""
    run = await api(request).chronos.runs.cancel(request.path_params["run_id"])
    return _raw(run_json(run), 200 if run.status is RunStatus.CANCELLED else 202)


# ----------------------------------------------------------------------------------------- stats


_ENDED = [s for s in RunStatus if s not in (RunStatus.QUEUED, RunStatus.RUNNING)]


async def stats(request: Request) -> Response:
    ctx = api(request)
    chronos = ctx.chronos
    counts = await chronos.runs.stats(top=5)
    named: dict[str, Job] = {}
    for job_id in sorted({j for w in counts.windows for j, _ in (*w.busiest, *w.failing)}):
        with contextlib.suppress(JobNotFound):  # deleted since: shown without a name
            named[job_id] = await chronos.jobs.get(job_id)
    summaries = await chronos.jobs.summaries(named.values())

    def entry(job_id: str, n: int, failing: bool = False) -> JobCount:
        job, summary = named.get(job_id), summaries.get(job_id)
        return JobCount(job_id=job_id, name=job.name if job else None, runs=n,
                        consecutive_failures=summary.consecutive_failures if failing and summary else None)

    def window(w: RunCounts) -> WindowStats:
        by_status = {s.value: w.by_status.get(s, 0) for s in _ENDED}
        return WindowStats(since=w.since, total=sum(by_status.values()), by_status=by_status,
                           busiest=[entry(j, n) for j, n in w.busiest],
                           failing=[entry(j, n, failing=True) for j, n in w.failing])

    hour, day = counts.windows
    jobs = {s.value: counts.jobs.get(s, 0) for s in JobStatus}
    jobs["total"] = sum(counts.jobs.values())
    active = {s.value: counts.active.get(s, 0) for s in (RunStatus.QUEUED, RunStatus.RUNNING)}
    return _json(Stats(time=chronos.clock.now(), jobs=jobs, runs=active, last_hour=window(hour),
                       last_day=window(day)))


# ------------------------------------------------------------------------------------- schedules


async def preview_schedule(request: Request) -> Response:
    q = parse_query(request, PreviewQuery)
    job = None
    if q.job_id is not None:
        job = await api(request).chronos.jobs.get(q.job_id)
        q = q.model_copy(update={"schedule": job.schedule, "timezone": job.timezone})
    elif q.schedule is None:
        raise InvalidParameters([FieldError(("schedule",), "give a schedule (or a job_id)")])
    times = fire_times(parse_schedule(q.schedule, q.timezone), datetime.now(UTC), q.count)
    excluded: list[datetime] = []
    offsets: list[float] = []
    if job is not None:
        excluded = [t for t in times if job.exclude and excluded_by(job, t) is not None]
        offsets = [jitter_offset(job.id, t, job.jitter).total_seconds() if job.jitter else 0.0 for t in times]
    return _json(SchedulePreview(schedule=q.schedule or "", timezone=q.timezone, times=times,
                                 excluded=excluded, offsets=offsets))


# ---------------------------------------------------------------------------------------- table

_J = "jobs"
_R = "runs"
_JOB_EXAMPLE = {"name": "nightly-report", "type": "http", "schedule": "0 2 * * *",
                "timezone": "Europe/Berlin", "payload": {"method": "POST", "url": "https://example.com/report"},
                "retry": {"strategy": "exponential", "max_attempts": 3, "delay": 30}, "timeout": 300}
_IDEMPOTENCY = {"Idempotency-Key": "replays the first answer for a repeated key with the same body"}


def _ops() -> list[Op]:
    from .monitor import stream_all, stream_job, stream_run  # SSE handlers
    from .views import view_ops  # what the dashboard needs

    sse = "text/event-stream"
    return [
        Op("GET", "/jobs/health", jobs_health, "Liveness of the jobs API", 200, Health, "health",
           public=True),
        Op("GET", "/monitor/health", monitor_health, "Liveness of the monitor API", 200, Health, "health",
           public=True),
        Op("GET", "/ready", readiness, "Readiness: the store answers", 200, Readiness, "health",
           errors=(503,), public=True),
        Op("GET", "/metrics", metrics, "Prometheus metrics", 200, None, "monitor",
           media_type=CONTENT_TYPE),
        Op("POST", "/jobs", create_job, "Create a job", 201, JobOut, _J, body=JobSpec,
           errors=(400, 409, 413, 415, 422), headers={"Location": "the new job's URL"},
           request_headers=_IDEMPOTENCY, creates="job_id", example=_JOB_EXAMPLE),
        Op("GET", "/jobs", list_jobs, "List jobs (keyset pagination)", 200, JobPage, _J, query=JobListQuery,
           errors=(422,)),
        Op("POST", "/jobs/apply", apply_jobs, "Apply a set of jobs (jobs as code)", 200, ApplyOut, _J,
           body=JobsApply, query=ApplyQuery, errors=(400, 409, 413, 415, 422),
           description="Creates the jobs of the set that do not exist, updates (by name) those that "
                       "differ, leaves the others; with prune, deletes every job not in the set. The "
                       "whole set is validated first (errors point into /jobs/N). Applying the same set "
                       "twice changes nothing. A job's status, if the set does not give one, stays as "
                       "it is (paused by hand)."),
        Op("GET", "/jobs/{job_id}", get_job, "Get a job", 200, JobOut, _J, errors=(404,)),
        Op("PUT", "/jobs/{job_id}", replace_job, "Replace a job's definition (secrets shown as *** are kept)",
           200, JobOut, _J, body=JobSpec, errors=(400, 404, 409, 413, 415, 422), example=_JOB_EXAMPLE,
           description="A job as GET returned it is accepted: id (if given, the job's own), next_run_at, "
                       "created_at, updated_at and the run summaries are ignored."),
        Op("PATCH", "/jobs/{job_id}", patch_job, "Change some fields of a job (JSON merge patch, RFC 7396)",
           200, JobOut, _J, body=JobPatch, errors=(400, 404, 409, 413, 415, 422),
           request_media_type="application/merge-patch+json",
           description="Objects merge, null removes a field (it takes its default), other values replace. "
                       "Fields a GET shows beyond the definition (id, next_run_at, summaries) are ignored."),
        Op("DELETE", "/jobs/{job_id}", delete_job, "Delete a job and its history", 204, None, _J,
           errors=(404,)),
        Op("PATCH", "/jobs/{job_id}/status", set_job_status, "Pause or resume (restart) a job", 200, JobOut,
           _J,
           body=StatusChange, errors=(400, 404, 413, 415, 422)),
        Op("GET", "/jobs/{job_id}/history", job_history, "The job's runs, newest first", 200, RunPage, _J,
           query=HistoryQuery, errors=(404, 422)),
        Op("DELETE", "/jobs/{job_id}/history", delete_job_history, "Delete the job's finished runs", 200,
           HistoryDeleted, _J, errors=(404,)),
        Op("POST", "/jobs/{job_id}/run", run_job_now, "Run the job now", 202, RunOut, _J, errors=(404,),
           headers={"Location": "the run's URL"}, creates="run_id"),
        Op("GET", "/runs", list_runs, "List runs of all jobs, newest first (keyset pagination)", 200,
           RunPage, _R, query=RunListQuery, errors=(422,)),
        Op("GET", "/runs/{run_id}", get_run, "Get a run (a running one with its output so far)", 200, RunOut,
           _R, errors=(404,)),
        Op("GET", "/runs/{run_id}/notifications", run_notifications,
           "What the run's outcome set off (notifications, chained runs, an auto-pause) and each delivery "
           "attempt", 200, NoticePage, _R, errors=(404,)),
        Op("GET", "/runs/{run_id}/log", run_log,
           "The run's output as plain text (?follow=true: until it ends)", 200, None, _R, query=LogQuery,
           errors=(404, 422), media_type="text/plain"),
        Op("POST", "/runs/{run_id}/cancel", cancel_run, "Cancel a run", 200, RunOut, _R, errors=(404, 409),
           extra_responses={202: (RunOut, "the run is running; its worker was asked to stop it")}),
        Op("GET", "/stats", stats, "Counts for a dashboard: jobs, runs now, the last hour and day", 200,
           Stats, "monitor"),
        Op("GET", "/schedules/preview", preview_schedule,
           "The next fire times of a schedule (or of a job: its excluded slots and jitter offsets)", 200,
           SchedulePreview, "schedules", query=PreviewQuery, errors=(404, 422)),
        Op("GET", "/monitor/logs", stream_all, "Live events of all jobs (SSE)", 200, None, "monitor",
           media_type=sse, errors=(422,)),
        Op("GET", "/monitor/logs/{job_id}", stream_job, "Live events of one job (SSE)", 200, None, "monitor",
           media_type=sse, errors=(404, 422)),
        Op("GET", "/monitor/runs/{run_id}", stream_run, "Live events of one run (SSE)", 200, None,
           "monitor", media_type=sse, errors=(404, 422)),
        *view_ops(),
    ]


OPS: list[Op] = _ops()

