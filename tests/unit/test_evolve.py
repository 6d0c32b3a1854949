"""``models.evolve`` copies slot by slot (for speed, BENCHMARKS.md); these hold it to what
``dataclasses.replace`` does for the three classes it is for."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chronos_core.models import (
    Event,
    EventType,
    Job,
    JobStatus,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    Trigger,
    evolve,
    new_run,
)
from chronos_core.retry import RetryPolicy

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def _job() -> Job:
    return Job(id="j1", name="a", type="noop", payload={"x": [1]}, schedule="@every 1s", timezone="UTC",
               retry=RetryPolicy(), timeout=None, overlap=OverlapPolicy.ALLOW, misfire=MisfirePolicy.SKIP,
               misfire_grace=1.0, status=JobStatus.ACTIVE, created_at=NOW, updated_at=NOW, next_run_at=NOW)


SAMPLES = [
    (_job(), {"next_run_at": NOW + timedelta(seconds=1)}),
    (new_run("j1", NOW, Trigger.SCHEDULE, NOW),
     {"status": RunStatus.RUNNING, "started_at": NOW, "owner": "w", "lease_expires_at": NOW}),
    (Event(type=EventType.RUN_QUEUED, time=NOW, run_id="r", data={"a": 1}), {"id": "7"}),
]


@pytest.mark.parametrize("cls", [Job, Run, Event])
def test_every_field_is_a_slot_of_the_class_itself(cls: Any) -> None:
    # evolve copies __slots__: a field that is no slot of the class (a base class's, a non-slot field)
    # would be dropped silently, and __post_init__ would be skipped
    assert cls.__slots__ == tuple(f.name for f in dataclasses.fields(cls))
    assert [b for b in cls.__mro__ if dataclasses.is_dataclass(b)] == [cls]
    assert not hasattr(cls, "__post_init__")


@pytest.mark.parametrize(("obj", "changes"), SAMPLES)
def test_same_copy_as_dataclasses_replace(obj: Any, changes: dict[str, object]) -> None:
    for c in ({}, changes):
        got, want = evolve(obj, **c), dataclasses.replace(obj, **c)
        assert got == want and got is not obj and type(got) is type(obj)
        for f in dataclasses.fields(obj):
            assert getattr(got, f.name) is getattr(want, f.name)  # shallow, as replace
    assert obj == dataclasses.replace(obj)  # the original is left as it was


@pytest.mark.parametrize(("obj", "changes"), SAMPLES)
def test_a_name_that_is_no_field_is_a_type_error(obj: Any, changes: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        dataclasses.replace(obj, nope=1)
    with pytest.raises(TypeError, match="nope"):
        evolve(obj, **changes, nope=1)
