"""Run events carry ISO-8601 times; the formatting cache must never change what a time reads as."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from chronos_core.events import run_data
from chronos_core.models import Run, RunStatus, Trigger


def _run(slot: datetime, started: datetime | None = None) -> Run:
    return Run(id="r", job_id="j", scheduled_for=slot, trigger=Trigger.SCHEDULE, attempt=1,
               status=RunStatus.RUNNING, created_at=slot, due_at=slot + timedelta(seconds=2),
               started_at=started)


def test_times_read_the_same_every_time_and_keep_their_zone() -> None:
    slot = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    berlin = slot.astimezone(ZoneInfo("Europe/Berlin"))  # the same instant, another zone
    for _ in range(2):  # the second round is served from the cache
        data = run_data(_run(slot, started=slot + timedelta(milliseconds=5)))
        assert data["scheduled_for"] == "2030-01-01T12:00:00.250000+00:00"
        assert data["due_at"] == "2030-01-01T12:00:02.250000+00:00"
        assert data["started_at"] == "2030-01-01T12:00:00.255000+00:00"
        assert data["finished_at"] is None
        assert run_data(_run(berlin))["scheduled_for"] == "2030-01-01T13:00:00.250000+01:00"
