"""The client commands of ``chronos``: ``jobs``, ``runs``, ``logs``, ``preview``, ``apply``, calling the
REST API of a running Chronos through :mod:`chronos_app.client`.

Where: ``--url`` / ``CHRONOS_URL`` (default http://127.0.0.1:8080), ``--token`` / ``CHRONOS_TOKEN``; both
are accepted before the command (``chronos --url U jobs list``) or after it. Output: tables for people,
``-o json|yaml|id`` for scripts. Exit codes are the ``EXIT_*`` constants below (the README lists them).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from . import cli_render as render
from .client import DEFAULT_URL, FINISHED_STATUSES, ApiProblem, ChronosClient, ServerUnreachable

__all__ = ["CLIENT_COMMANDS", "EXIT_CODES", "connection_options"]

EXIT_OK = 0
EXIT_RUN_FAILED = 1      # --exit-status / --wait: the run ended in another status than succeeded
EXIT_USAGE = 2           # bad options or arguments, an unreadable job file (click's own code)
EXIT_NOT_FOUND = 3       # no such job or run (404)
EXIT_REFUSED = 4         # the API refused the request: invalid input (422), conflict (409), 400, 413, 415
EXIT_AUTH = 5            # no or a wrong token (401), a read-only token asked to write (403)
EXIT_UNREACHABLE = 6     # no answer from the API (connection refused, timeout), or a server error (5xx)
EXIT_NOT_FINISHED = 7    # --exit-status: the run is still queued or running
EXIT_CODES = {EXIT_OK: "success", EXIT_RUN_FAILED: "the run did not succeed", EXIT_USAGE: "usage error",
              EXIT_NOT_FOUND: "not found", EXIT_REFUSED: "refused (invalid input, conflict)",
              EXIT_AUTH: "authentication or permission", EXIT_UNREACHABLE: "API unreachable or failing",
              EXIT_NOT_FINISHED: "the run has not finished"}
_EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {what}" for code, what in EXIT_CODES.items())

_SERVER_OWNED = ("id", "next_run_at", "created_at", "updated_at", "last_run", "last_success_at",
                 "last_failure_at", "consecutive_failures", "consecutive_failed_slots", "paused_reason",
                 "next_runs")
F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------------- shared options


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """Store --url/--token in the context chain's shared ``meta``: the command line beats the
    environment, an option after the command beats one before it."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or param.name is None:
            return
        if ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE or key not in ctx.meta:
            ctx.meta[key] = value

    return callback


def connection_options(f: F) -> F:
    """``--url`` and ``--token`` (also from ``CHRONOS_URL``/``CHRONOS_TOKEN``), for any group or command."""
    f = click.option("--token", envvar="CHRONOS_TOKEN", show_envvar=True, expose_value=False,
                     callback=_remember("chronos.token"), metavar="TOKEN",
                     help="API bearer token (prefer the variable: a command line is visible to others)")(f)
    f = click.option("--url", envvar="CHRONOS_URL", show_envvar=True, expose_value=False,
                     callback=_remember("chronos.url"), metavar="URL",
                     help=f"the Chronos API [default: {DEFAULT_URL}]")(f)
    return f


def _output_option(f: F) -> F:
    return click.option("-o", "--output", "fmt", type=click.Choice(render.FORMATS), default="table",
                        show_default=True, help="table for people; json, yaml or ids for scripts")(f)


def _client() -> ChronosClient:
    meta = click.get_current_context().meta
    url = str(meta.get("chronos.url") or DEFAULT_URL)
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--url must start with http:// or https:// (got {url!r})")
    return ChronosClient(url, meta.get("chronos.token"))


def _exit_code(status: int) -> int:
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (401, 403):
        return EXIT_AUTH
    return EXIT_UNREACHABLE if status >= 500 else EXIT_REFUSED


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)


class ClientCommand(click.Command):
    """Turns the client's errors into a readable message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiProblem as exc:
            _fail(str(exc), _exit_code(exc.status))
        except ServerUnreachable as exc:
            _fail(f"{exc} (is 'chronos serve' running there? set --url or CHRONOS_URL)", EXIT_UNREACHABLE)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        return None


class ClientGroup(click.Group):
    command_class = ClientCommand


# --------------------------------------------------------------------------------------------- jobs


@click.group(cls=ClientGroup, epilog=_EXIT_HELP)
@connection_options
def jobs() -> None:
    """Create, list, change and run jobs; NAME is a job's name or id."""


@jobs.command("list")
@connection_options
@_output_option
@click.option("--status", type=click.Choice(["active", "paused"]), help="only jobs in this status")
@click.option("--last-status", metavar="STATUS[,STATUS]", help="only jobs whose last run ended so (failed)")
@click.option("--type", "job_type", metavar="TYPE", help="only jobs of this type (shell, http, ...)")
@click.option("--name", metavar="PREFIX", help="only jobs whose name starts with this")
@click.option("--limit", type=click.IntRange(1), help="at most this many (default: all)")
def jobs_list(fmt: str, status: str | None, last_status: str | None, job_type: str | None,
              name: str | None, limit: int | None) -> None:
    """List jobs."""
    with _client() as c:
        items = list(c.list_jobs(status=status, type=job_type, name=name, last_status=last_status,
                                 limit=limit))
    render.emit(fmt, items, render.job_table(items) if items else "no jobs", [j["id"] for j in items])


@jobs.command("get")
@connection_options
@_output_option
@click.argument("name")
def jobs_get(fmt: str, name: str) -> None:
    """Show one job."""
    with _client() as c:
        job = c.resolve_job(name)
    render.emit(fmt, job, render.job_detail(job), [job["id"]])


def _job_file(ctx_param: str, source: str) -> tuple[list[dict[str, Any]], bool]:
    from .jobfile import JobFileError, read_jobs

    try:
        return read_jobs(source)
    except JobFileError as exc:
        raise click.BadParameter(str(exc), param_hint=ctx_param) from None


def _definition(spec: dict[str, Any]) -> dict[str, Any]:
    """A job as a file gives it, without what the server keeps itself (a job as ``jobs get`` printed it,
    from this server or another, is a valid definition)."""
    return {k: v for k, v in spec.items() if k not in _SERVER_OWNED}


_FILE = click.option("-f", "--file", "source", required=True, metavar="FILE",
                     help="a YAML or JSON job definition; - reads standard input")


@jobs.command("create")
@connection_options
@_output_option
@_FILE
def jobs_create(fmt: str, source: str) -> None:
    """Create the job(s) defined in FILE (one job, a list, or several YAML documents; a job as 'jobs get
    -o yaml' printed it works too)."""
    specs, single = _job_file("'-f'", source)
    created: list[dict[str, Any]] = []
    with _client() as c:
        try:
            for spec in specs:
                created.append(c.create_job(_definition(spec)))
                if fmt == "table":
                    click.echo(f"created job {render.clean(created[-1]['name'])} ({created[-1]['id']})")
        except ApiProblem as exc:
            if len(specs) > 1:
                exc.title += f" (job #{len(created) + 1} of {len(specs)}: {spec.get('name', '?')!r})"
            raise
    if fmt != "table":
        render.emit(fmt, created[0] if single else created, ids=[j["id"] for j in created])


@jobs.command("update")
@connection_options
@_output_option
@_FILE
@click.option("--merge", is_flag=True,
              help="change only the fields in FILE (JSON merge-patch) instead of replacing the definition")
@click.argument("name")
def jobs_update(fmt: str, source: str, merge: bool, name: str) -> None:
    """Replace the definition of job NAME with FILE (fields left out get their defaults; with --merge
    they keep their values). A job as 'jobs get -o yaml' prints it is a valid FILE."""
    specs, single = _job_file("'-f'", source)
    if not single:
        raise click.BadParameter("holds more than one job; update takes one", param_hint="'-f'")
    spec = specs[0]
    with _client() as c:
        job = c.resolve_job(name)
        if merge:
            updated = c.patch_job(job["id"], spec)
        else:
            updated = c.replace_job(job["id"], {"name": job["name"], **_definition(spec)})
    render.emit(fmt, updated, f"updated job {updated['name']} ({updated['id']})", [updated["id"]])


@jobs.command("delete")
@connection_options
@_output_option
@click.argument("name")
def jobs_delete(fmt: str, name: str) -> None:
    """Delete job NAME and its run history."""
    with _client() as c:
        job = c.resolve_job(name)
        c.delete_job(job["id"])
    render.emit(fmt, job, f"deleted job {job['name']} ({job['id']})", [job["id"]])


def _set_status(fmt: str, name: str, status: str, verb: str) -> None:
    with _client() as c:
        job = c.set_job_status(c.resolve_job(name)["id"], status)
    render.emit(fmt, job, f"{verb} job {job['name']} (next run: {render.moment(job.get('next_run_at'))})",
                [job["id"]])


@jobs.command("pause")
@connection_options
@_output_option
@click.argument("name")
def jobs_pause(fmt: str, name: str) -> None:
    """Stop scheduling job NAME (it can still be triggered)."""
    _set_status(fmt, name, "paused", "paused")


@jobs.command("resume")
@connection_options
@_output_option
@click.argument("name")
def jobs_resume(fmt: str, name: str) -> None:
    """Schedule job NAME again."""
    _set_status(fmt, name, "active", "resumed")


@jobs.command("trigger")
@connection_options
@_output_option
@click.option("--wait", is_flag=True, help="wait until the run ends; exit 1 unless it succeeded")
@click.option("-f", "--follow", is_flag=True, help="print the run's output as it comes (implies --wait)")
@click.argument("name")
def jobs_trigger(fmt: str, wait: bool, follow: bool, name: str) -> None:
    """Run job NAME now (also while it is paused)."""
    if follow and fmt != "table":
        raise click.UsageError("--follow prints the run's output; use --wait with -o " + fmt)
    with _client() as c:
        job = c.resolve_job(name)
        run = c.trigger_job(job["id"])
        if not (wait or follow):
            render.emit(fmt, run, f"triggered job {job['name']}: run {run['id']} ({run['status']})",
                        [run["id"]])
            return
        if follow:
            click.echo(f"run {run['id']} of job {render.clean(job['name'])}:", err=True)
            _print_stream(c.follow_log(run["id"]))
        run = _wait(c, run)
    if follow:  # the output was the show; the outcome goes to stderr
        click.echo(f"run {run['id']} {render.outcome(run)}", err=True)
    else:
        render.emit(fmt, run, render.run_detail(run, job["name"]), [run["id"]])
    if run["status"] != "succeeded":
        raise click.exceptions.Exit(EXIT_RUN_FAILED)


def _print_stream(chunks: Iterator[str]) -> None:
    """Write the pieces as they come, and end with a newline if the output did not."""
    out = sys.stdout
    last = "\n"
    for chunk in chunks:
        if chunk:
            out.write(chunk)
            out.flush()
            last = chunk[-1]
    if last != "\n":
        out.write("\n")
        out.flush()


def _wait(c: ChronosClient, run: dict[str, Any]) -> dict[str, Any]:
    pause = 0.2
    while run["status"] not in FINISHED_STATUSES:
        time.sleep(pause)
        pause = min(pause * 1.5, 2.0)
        run = c.get_run(run["id"])
    return run


# --------------------------------------------------------------------------------------------- runs


@click.group(cls=ClientGroup, epilog=_EXIT_HELP)
@connection_options
def runs() -> None:
    """List and inspect runs (one attempt at one slot of a job)."""


class _JobNames:
    """Job names for runs' job ids, fetched once each (a deleted job shows its id)."""

    def __init__(self, client: ChronosClient) -> None:
        self._client = client
        self._names: dict[str, str] = {}

    def add(self, job: dict[str, Any]) -> None:
        self._names[job["id"]] = job["name"]

    def of(self, runs: list[dict[str, Any]]) -> dict[str, str]:
        for job_id in {r["job_id"] for r in runs} - set(self._names):
            try:
                self._names[job_id] = self._client.get_job(job_id)["name"]
            except ApiProblem as exc:
                if exc.status != 404:
                    raise
                self._names[job_id] = job_id
        return self._names


_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An ISO 8601 time (naive: UTC) or an age (``2h``: two hours ago), as the API's aware ISO text."""
    if value is None:
        return None
    text = value.strip()
    age = _AGE.match(text.lower())
    if age:
        return (datetime.now(UTC) - timedelta(seconds=float(age[1]) * _UNIT[age[2]])).isoformat()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter("give an ISO 8601 time (2026-05-04T09:00:00+02:00, 2026-05-04) or an "
                                 "age (30m, 2h, 1d)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


@runs.command("list")
@connection_options
@_output_option
@click.option("--job", "job_ref", metavar="NAME", help="only runs of this job (name or id)")
@click.option("--status", metavar="STATUS[,STATUS]", help="e.g. failed or failed,timed_out")
@click.option("--trigger", metavar="TRIGGER[,TRIGGER]", help="schedule, manual, retry, catch_up")
@click.option("--since", metavar="TIME", callback=_time_option,
              help="slots at or after TIME: ISO 8601 (UTC unless it says), or an age: 30m, 2h, 1d")
@click.option("--until", metavar="TIME", callback=_time_option, help="slots at or before TIME (as --since)")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
def runs_list(fmt: str, job_ref: str | None, status: str | None, trigger: str | None, since: str | None,
              until: str | None, limit: int) -> None:
    """List runs, newest first."""
    with _client() as c:
        names = _JobNames(c)
        job_id = None
        if job_ref:
            job = c.resolve_job(job_ref)
            names.add(job)
            job_id = job["id"]
        items = list(c.list_runs(job_id=job_id, status=status, trigger=trigger, since=since, until=until,
                                 limit=limit))
        table = render.run_table(items, names.of(items)) if fmt == "table" and items else "no runs"
    render.emit(fmt, items, table, [r["id"] for r in items])


@runs.command("get")
@connection_options
@_output_option
@click.option("--exit-status", is_flag=True,
              help=f"exit {EXIT_RUN_FAILED} if the run did not succeed, {EXIT_NOT_FINISHED} if it has not "
                   "finished")
@click.option("--wait", is_flag=True, help="wait until the run ends (with --exit-status: then exit by it)")
@click.argument("run_id")
def runs_get(fmt: str, exit_status: bool, wait: bool, run_id: str) -> None:
    """Show one run (its output tail included)."""
    with _client() as c:
        run = c.get_run(run_id)
        if wait:
            run = _wait(c, run)
        name = _JobNames(c).of([run]).get(run["job_id"]) if fmt == "table" else None
    render.emit(fmt, run, render.run_detail(run, name), [run["id"]])
    if exit_status:
        if run["status"] not in FINISHED_STATUSES:
            raise click.exceptions.Exit(EXIT_NOT_FINISHED)
        if run["status"] != "succeeded":
            raise click.exceptions.Exit(EXIT_RUN_FAILED)


@runs.command("cancel")
@connection_options
@_output_option
@click.argument("run_id")
def runs_cancel(fmt: str, run_id: str) -> None:
    """Cancel a queued or running run."""
    with _client() as c:
        run = c.cancel_run(run_id)
    note = "cancelled" if run["status"] == "cancelled" else "its worker was asked to stop it"
    render.emit(fmt, run, f"run {run['id']}: {note}", [run["id"]])


# -------------------------------------------------------------------------------------- logs, preview


@click.command(cls=ClientCommand)
@connection_options
@click.option("-f", "--follow", is_flag=True, help="keep printing new output until the run ends")
@click.argument("run_id")
def logs(follow: bool, run_id: str) -> None:
    """Print the output of run RUN_ID (secrets masked)."""
    with _client() as c:
        _print_stream(c.follow_log(run_id) if follow else iter([c.run_log(run_id)]))


@click.command(cls=ClientCommand)
@connection_options
@_output_option
@click.option("--tz", "timezone", default="UTC", show_default=True, metavar="ZONE",
              help="the IANA time zone the schedule is read in")
@click.option("-n", "--count", type=click.IntRange(1, 100), default=5, show_default=True)
@click.argument("schedule")
def preview(fmt: str, timezone: str, count: int, schedule: str) -> None:
    """The next fire times of SCHEDULE (as a job would have it), e.g. "0 9 * * mon-fri"."""
    with _client() as c:
        result = c.preview(schedule, timezone, count)
    render.emit(fmt, result, render.preview_table(result) if result["times"] else "no future times",
                result["times"])


@click.command(cls=ClientCommand, epilog=_EXIT_HELP)
@connection_options
@_output_option
@click.option("-f", "--file", "source", required=True, metavar="FILE",
              help="the jobs: YAML or JSON (a list, or documents), TOML ([[jobs]] tables, .toml); - reads "
                   "standard input. ${VAR} in a value is taken from the environment")
@click.option("--prune", is_flag=True, help="delete every job that is not in FILE")
@click.option("--dry-run", is_flag=True, help="only say what would change")
def apply(fmt: str, source: str, prune: bool, dry_run: bool) -> None:
    """Make the jobs in FILE true on the server (jobs as code): create the missing ones, update by name
    those that differ, leave the others; --prune deletes every job not in FILE. Applying the same file
    twice changes nothing. Secrets stay out of the file as ${VAR}."""
    from .jobfile import JobFileError, read_jobs

    try:
        specs, _ = read_jobs(source, expand=True)
    except JobFileError as exc:
        raise click.BadParameter(str(exc), param_hint="'-f'") from None
    with _client() as c:
        result = c.apply_jobs([_definition(s) for s in specs], prune=prune, dry_run=dry_run)
    if fmt != "table":
        render.emit(fmt, result, ids=[*result["created"], *result["updated"], *result["deleted"]])
        return
    would = "would be " if dry_run else ""
    for key in ("created", "updated", "deleted", "unchanged"):
        for name in result[key]:
            click.echo(f"{would if key != 'unchanged' else ''}{key} {render.clean(name)}")
    counts = ", ".join(f"{len(result[k])} {k}" for k in ("created", "updated", "unchanged", "deleted"))
    click.echo(f"{'dry run: ' if dry_run else ''}{counts}")


CLIENT_COMMANDS: tuple[click.Command, ...] = (jobs, runs, logs, preview, apply)

