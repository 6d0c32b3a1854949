"""How the client commands print: rich tables for people, ``json``/``yaml``/``id`` for scripts.

Everything that came from the server is printed as text, never as rich markup, and with control
characters replaced, so a job name or an error message cannot restyle or take over the terminal.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import click

__all__ = ["FORMATS", "clean", "duration", "emit", "job_detail", "job_table", "moment", "outcome",
           "preview_table", "relative", "run_detail", "run_table"]

FORMATS = ("table", "json", "yaml", "id")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "timed_out": "red", "cancelled": "yellow",
                 "running": "cyan", "queued": "blue", "skipped": "dim", "missed": "magenta",
                 "active": "green", "paused": "yellow"}


def _console() -> Any:
    from rich.console import Console

    # Piped output keeps whole lines (rich would wrap at 80 columns); COLUMNS still wins when set.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 250
    return Console(width=width, highlight=False, markup=False, emoji=False, soft_wrap=False)


def clean(value: object) -> str:
    return _CONTROL.sub("?", "" if value is None else str(value))


def emit(fmt: str, data: Any, table: Any = None, ids: Iterable[str] = ()) -> None:
    """Print ``data`` as ``fmt``; ``table`` (a rich renderable or a text line) is the ``table`` form."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    elif fmt == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
    elif fmt == "id":
        for i in ids:
            click.echo(i)
    elif isinstance(table, str):
        click.echo(clean(table))
    elif table is not None:
        console = _console()
        if console.is_terminal:
            console.print(table)
        else:  # piped: no padding at the ends of lines
            with console.capture() as captured:
                console.print(table)
            click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


# ------------------------------------------------------------------------------------------- values


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            rest = s % size
            smaller = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            tail = f" {rest // smaller[1]}{smaller[0]}" if rest // smaller[1] else ""
            return f"{s // size}{unit}{tail}"
    return f"{s}s"


def moment(text: str | None, *, relative: bool = True, tz: str | None = None) -> str:
    """``2026-05-04 07:00:00Z (in 3m)``; in ``tz`` when given; ``-`` for none."""
    when = _time(text)
    if when is None:
        return "-" if not text else clean(text)
    if tz and tz != "UTC":
        shown = when.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")
    else:
        shown = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{shown} ({_relative(when)})" if relative else shown


def _relative(when: datetime) -> str:
    delta = (when - datetime.now(UTC)).total_seconds()
    return "in " + _span(delta) if delta > 0 else _span(delta) + " ago"


def relative(text: str | None) -> str:
    """``in 3m`` / ``3m ago``; ``-`` for none."""
    when = _time(text)
    return "-" if when is None else _relative(when)


def duration(run: dict[str, Any]) -> str:
    start, end = _time(run.get("started_at")), _time(run.get("finished_at"))
    if start is None:
        return "-"
    if end is None:
        return _span((datetime.now(UTC) - start).total_seconds()) + "…"
    return _span((end - start).total_seconds())


def outcome(run: dict[str, Any]) -> str:
    """``failed after 1.2s (exit code 3): <error>`` for a finished run."""
    text = f"{run.get('status')} after {duration(run)}"
    if run.get("exit_code") is not None:
        text += f" (exit code {run['exit_code']})"
    if run.get("error"):
        text += ": " + str(run["error"]).splitlines()[0]
    return clean(text)


def _status(value: str | None) -> Any:
    from rich.text import Text

    return Text(clean(value or "-"), style=_STATUS_STYLE.get(value or "", ""))


def _cell(value: object) -> Any:
    from rich.text import Text

    return Text(clean("-" if value in (None, "") else value))


def _table(*headers: str) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for h in headers:
        table.add_column(h, no_wrap=h in ("ID", "NAME", "STATUS"), overflow="fold")
    return table


def _details(rows: Sequence[tuple[str, Any]]) -> Any:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value if not isinstance(value, str | int | float | type(None)) else _cell(value))
    return grid


# --------------------------------------------------------------------------------------------- jobs


def _last_run(job: dict[str, Any]) -> Any:
    from rich.text import Text

    last = job.get("last_run")
    if not isinstance(last, dict):
        return _cell(None)
    when = last.get("finished_at") or last.get("scheduled_for")
    text = _status(last.get("status"))
    text.append(Text(" " + relative(when) if when else ""))
    return text


def job_table(jobs: Sequence[dict[str, Any]]) -> Any:
    table = _table("NAME", "TYPE", "SCHEDULE", "TIMEZONE", "STATUS", "LAST RUN", "NEXT RUN (UTC)", "ID")
    for j in jobs:
        table.add_row(_cell(j.get("name")), _cell(j.get("type")), _cell(j.get("schedule") or "(manual)"),
                      _cell(j.get("timezone")), _status(j.get("status")), _last_run(j),
                      _cell(moment(j.get("next_run_at"))), _cell(j.get("id")))
    return table


def job_detail(job: dict[str, Any]) -> Any:
    retry = job.get("retry") or {}
    retry_text = (f"{retry.get('strategy')}, at most {retry.get('max_attempts')} attempts, "
                  f"delay {retry.get('delay')}s" if retry.get("max_attempts", 1) > 1 else "none")
    rows: list[tuple[str, Any]] = [
        ("name", job.get("name")), ("id", job.get("id")), ("type", job.get("type")),
        ("status", _status(job.get("status"))), ("schedule", job.get("schedule") or "(manual only)"),
        ("timezone", job.get("timezone")), ("description", job.get("description")),
        ("next run", moment(job.get("next_run_at"))),
    ]
    if job.get("next_runs"):
        rows.append(("next runs", ", ".join(moment(t, relative=False) for t in job["next_runs"])))
    if "last_run" in job:
        rows.append(("last run", _last_run(job)))
    for key in ("last_success_at", "last_failure_at"):
        if key in job:
            rows.append((key.replace("_at", "").replace("_", " "), moment(job.get(key))))
    if "consecutive_failures" in job:
        rows.append(("consecutive failures", job.get("consecutive_failures")))
    if job.get("paused_reason"):
        rows.append(("paused because", job["paused_reason"]))
    rows += [("retry", retry_text), ("timeout", f"{job['timeout']}s" if job.get("timeout") else None),
             ("overlap", job.get("overlap")), ("misfire", job.get("misfire")),
             ("created", moment(job.get("created_at"))), ("updated", moment(job.get("updated_at")))]
    for key, value in (job.get("payload") or {}).items():
        if value in (None, {}, []):
            continue
        rows.append((f"payload.{key}", value if isinstance(value, str) else json.dumps(value)))
    return _details(rows)


# --------------------------------------------------------------------------------------------- runs


def run_table(runs: Sequence[dict[str, Any]], names: dict[str, str]) -> Any:
    table = _table("ID", "JOB", "STATUS", "TRIGGER", "ATTEMPT", "SCHEDULED FOR (UTC)", "DURATION", "EXIT",
                   "ERROR")
    for r in runs:
        error = (r.get("error") or "").splitlines()
        table.add_row(_cell(r.get("id")), _cell(names.get(r.get("job_id", ""), r.get("job_id"))),
                      _status(r.get("status")), _cell(r.get("trigger")), _cell(r.get("attempt")),
                      _cell(moment(r.get("scheduled_for"))), _cell(duration(r)), _cell(r.get("exit_code")),
                      _cell(error[0][:80] if error else None))
    return table


def run_detail(run: dict[str, Any], job_name: str | None) -> Any:
    from rich.console import Group
    from rich.text import Text

    job = f"{job_name} ({run.get('job_id')})" if job_name else run.get("job_id")
    rows: list[tuple[str, Any]] = [
        ("id", run.get("id")), ("job", job),
        ("status", _status(run.get("status"))), ("trigger", run.get("trigger")),
        ("attempt", run.get("attempt")), ("scheduled for", moment(run.get("scheduled_for"))),
        ("started", moment(run.get("started_at"))), ("finished", moment(run.get("finished_at"))),
        ("duration", duration(run)), ("exit code", run.get("exit_code")), ("error", run.get("error")),
    ]
    parts: list[Any] = [_details(rows)]
    if run.get("result") is not None:
        parts += [Text("result:", style="bold"), Text(clean(json.dumps(run["result"], indent=2,
                                                                      ensure_ascii=False)))]
    if run.get("output"):
        parts += [Text("output:", style="bold"), Text(clean(run["output"]))]
    return Group(*parts)


# ---------------------------------------------------------------------------------------- schedules


def preview_table(preview: dict[str, Any]) -> Any:
    tz = preview.get("timezone") or "UTC"
    headers = ["#", "UTC"] if tz == "UTC" else ["#", tz, "UTC"]
    table = _table(*headers, "FROM NOW")
    for i, t in enumerate(preview.get("times") or [], 1):
        cells = [moment(t, relative=False)] if tz == "UTC" else [moment(t, relative=False, tz=tz),
                                                                 moment(t, relative=False)]
        table.add_row(_cell(i), *map(_cell, cells), _cell(relative(t)))
    return table
