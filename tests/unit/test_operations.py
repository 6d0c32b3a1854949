"""Job operations: validation into precise errors, naming, updates, secrets, bulk creation."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus, MemoryStore
from chronos_core import (
    FakeClock,
    InvalidJob,
    InvalidSchedule,
    JobNotFound,
    Jobs,
    JobStatus,
    JobTypes,
    NameConflict,
    ShellNotAllowed,
    UnknownJobType,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def jobs() -> Jobs:
    return Jobs(MemoryStore(), MemoryDispatchQueue(), MemoryEventBus(), FakeClock(T0), JobTypes())


def shell(**extra: Any) -> dict[str, Any]:
    return {"name": "backup", "type": "shell", "schedule": "0 3 * * *",
            "payload": {"command": "echo hi"}, **extra}


async def test_create_returns_the_job_with_its_next_slot(jobs: Jobs) -> None:
    job = await jobs.create(shell(timezone="Europe/Berlin"))
    assert job.next_run_at == datetime(2030, 1, 1, 2, 0, tzinfo=UTC)  # 03:00 in Berlin (CET)
    assert job.status is JobStatus.ACTIVE
    assert await jobs.get(job.id) == job
    assert await jobs.get_by_name("backup") == job


async def test_every_bad_field_is_reported_at_once_with_a_pointer(jobs: Jobs) -> None:
    with pytest.raises(InvalidJob) as exc:
        await jobs.create({"name": "", "type": "http", "schedule": "61 * * * *", "timeout": -1,
                           "payload": {"url": "ftp://x"}, "retry": {"strategy": "sometimes"}})
    pointers = {e.pointer for e in exc.value.errors}
    assert pointers == {"/name", "/timeout", "/retry/strategy"}  # the model fails before the rest
    with pytest.raises(InvalidJob) as exc:
        await jobs.create({"name": "x", "type": "http", "schedule": "61 * * * *", "timezone": "Nowhere/City",
                           "payload": {"url": "ftp://x", "method": "GET"}})
    by_pointer = {e.pointer: e.reason for e in exc.value.errors}
    assert set(by_pointer) == {"/payload/url", "/schedule", "/timezone"}
    assert "minute field: value 61 is out of range 0-59" in by_pointer["/schedule"]
    assert "http:// or https://" in by_pointer["/payload/url"]


async def test_unknown_fields_and_types_are_rejected(jobs: Jobs) -> None:
    with pytest.raises(InvalidJob) as exc:
        await jobs.create(shell(colour="blue"))
    assert exc.value.errors[0].pointer == "/colour"
    with pytest.raises(InvalidJob) as exc:
        await jobs.create(shell(type="fax"))
    assert exc.value.errors[0].pointer == "/type"
    assert "known: email, http, python, shell, sql" in exc.value.errors[0].reason
    with pytest.raises(UnknownJobType):
        JobTypes().model("fax")


async def test_invalid_schedule_is_an_invalid_job_too(jobs: Jobs) -> None:
    with pytest.raises(InvalidSchedule) as exc:
        await jobs.create(shell(schedule="@every soon"))
    assert exc.value.field == "schedule" and "invalid duration 'soon'" in exc.value.reason


async def test_shell_jobs_can_be_forbidden(jobs: Jobs) -> None:
    jobs.allow_shell = False
    with pytest.raises(ShellNotAllowed) as exc:
        await jobs.create(shell())
    assert "CHRONOS_ALLOW_SHELL" in str(exc.value)


async def test_names_are_unique(jobs: Jobs) -> None:
    await jobs.create(shell())
    with pytest.raises(NameConflict, match="'backup' already exists"):
        await jobs.create(shell())


async def test_bulk_create_is_all_or_nothing_and_locates_errors(jobs: Jobs) -> None:
    items = [shell(name=f"j{i}") for i in range(5)]
    items[3]["schedule"] = "nope"
    with pytest.raises(InvalidJob) as exc:
        await jobs.create_many(items)
    assert exc.value.errors[0].loc == (3, "schedule")
    assert await jobs.list() == []
    items[3] = shell(name="j1")
    with pytest.raises(NameConflict):
        await jobs.create_many(items)
    assert await jobs.list() == []
    created = await jobs.create_many([shell(name=f"k{i}") for i in range(3)])
    assert [j.name for j in await jobs.list()] == [j.name for j in created] == ["k0", "k1", "k2"]


async def test_list_filters_and_pages(jobs: Jobs) -> None:
    await jobs.create_many([shell(name=f"a{i}") for i in range(5)] + [shell(name="b0", status="paused")])
    page1 = await jobs.list(limit=2)
    page2 = await jobs.list(limit=2, after=page1[-1].id)
    assert [j.name for j in page1 + page2] == ["a0", "a1", "a2", "a3"]
    assert [j.name for j in await jobs.list(status="paused")] == ["b0"]
    assert [j.name for j in await jobs.list(name="b")] == ["b0"]


async def test_update_replaces_the_definition_and_keeps_masked_secrets(jobs: Jobs) -> None:
    job = await jobs.create({"name": "ping", "type": "http", "schedule": "@hourly",
                             "payload": {"url": "https://example.com",
                                         "headers": {"Authorization": "Bearer s3cr3t"}}})
    shown = jobs.types.redact(job.type, job.payload)
    assert shown["headers"]["Authorization"] == "***"
    updated = await jobs.update(job.id, {"name": "ping", "type": "http", "schedule": "@hourly",
                                         "payload": {**shown, "method": "POST"}})
    assert updated.payload["headers"]["Authorization"] == "Bearer s3cr3t"
    assert updated.payload["method"] == "POST"
    assert updated.created_at == job.created_at and updated.id == job.id
    assert updated.next_run_at == job.next_run_at  # timing unchanged: the next slot stays


async def test_update_recomputes_the_next_slot_when_the_schedule_changes(jobs: Jobs) -> None:
    job = await jobs.create(shell())
    updated = await jobs.update(job.id, shell(schedule="*/5 * * * *"))
    assert updated.next_run_at == T0 + timedelta(minutes=5)


async def test_unknown_ids(jobs: Jobs) -> None:
    for call in (jobs.get("nope"), jobs.pause("nope"), jobs.delete("nope"), jobs.trigger("nope"),
                 jobs.history("nope"), jobs.update("nope", shell())):
        with pytest.raises(JobNotFound, match="'nope'"):
            await call


async def test_start_and_end_bound_the_slots(jobs: Jobs) -> None:
    start = T0 + timedelta(days=2, hours=5)
    job = await jobs.create(shell(schedule="0 * * * *", start_at=start.isoformat(),
                                  end_at=(start + timedelta(hours=1)).isoformat()))
    assert job.next_run_at == T0 + timedelta(days=2, hours=5)
    with pytest.raises(InvalidJob) as exc:
        await jobs.create(shell(name="other", start_at=start.isoformat(), end_at=start.isoformat()))
    assert exc.value.errors[0].pointer == "/end_at"
    ended = (T0 - timedelta(days=1)).isoformat()
    done = await jobs.create(shell(name="over", schedule="0 * * * *", end_at=ended))
    assert done.next_run_at is None


async def _refused(call: Awaitable[object]) -> InvalidJob:
    with pytest.raises(InvalidJob) as exc:
        await call
    return exc.value


async def test_a_number_is_not_a_time(jobs: Jobs) -> None:
    """pydantic alone reads a number where a datetime is expected as Unix seconds; the library refuses
    it as the API does: InvalidJob at the field (create, update, patch and apply all validate so)."""
    later = (T0 + timedelta(days=3)).isoformat()
    kept = await jobs.create(shell(name="kept"))
    for value in (0, 1_700_000_000, 1.5, True, Decimal("1700000000"), "1700000000", "0.0", "-1",
                  b"1700000000"):
        for pointer, fields in (("/start_at", {"start_at": value}), ("/end_at", {"end_at": value}),
                                ("/exclude/0/from", {"exclude": [{"from": value, "to": later}]}),
                                ("/exclude/0/to", {"exclude": [{"from": later, "to": value}]})):
            for err in [await _refused(jobs.create(shell(name="new", **fields))),
                        await _refused(jobs.update(kept.id, shell(**fields))),
                        await _refused(jobs.patch(kept.id, fields))]:
                assert [e.pointer for e in err.errors] == [pointer], err
                assert "date-time" in err.errors[0].reason
            err = await _refused(jobs.apply([shell(name="new", **fields)]))
            assert [e.pointer for e in err.errors] == [f"/0{pointer}"], err
    assert await jobs.get(kept.id) == kept
    start = T0 + timedelta(days=1)
    job = await jobs.create(shell(start_at=start, end_at=(start + timedelta(days=1)).isoformat(),
                                  exclude=[{"from": datetime(2031, 1, 1), "to": "2031-01-02T00:00:00"}]))
    assert (job.start_at, job.end_at) == (start, start + timedelta(days=1))  # datetimes and text, as before
    assert (job.exclude[0].from_, job.exclude[0].to) == (datetime(2031, 1, 1), datetime(2031, 1, 2))


async def test_history_status_filter_is_validated(jobs: Jobs) -> None:
    job = await jobs.create(shell())
    with pytest.raises(InvalidJob, match="unknown run status"):
        await jobs.history(job.id, status="exploded")
