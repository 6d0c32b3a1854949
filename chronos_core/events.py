"""Building events from jobs and runs, so every publisher describes them the same way."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .models import RUN_EVENT_FOR_STATUS, Event, EventType, Job, Run

__all__ = ["job_event", "run_data", "run_event"]


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def run_data(run: Run) -> dict[str, Any]:
    """The run's fields as carried by status events (output is left out: it travels as ``run.log``)."""
    slot = run.scheduled_for.isoformat()
    return {
        "status": run.status.value,
        "attempt": run.attempt,
        "trigger": run.trigger.value,
        "scheduled_for": slot,
        "due_at": slot if run.due_at is run.scheduled_for else run.due_at.isoformat(),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "exit_code": run.exit_code,
        "error": run.error,
    }


def run_event(run: Run, now: datetime, type: EventType | None = None) -> Event:
    """The event for the run's current status (or ``type``)."""
    return Event(type=type or RUN_EVENT_FOR_STATUS[run.status], time=now, job_id=run.job_id,
                 run_id=run.id, data=run_data(run))


def job_event(type: EventType, job: Job, now: datetime) -> Event:
    return Event(type=type, time=now, job_id=job.id,
                 data={"name": job.name, "status": job.status.value,
                       "next_run_at": _iso(job.next_run_at)})
