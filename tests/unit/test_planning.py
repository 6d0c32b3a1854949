"""The planner's fast path (one slot due, on time, nothing in its way) decides exactly as the general walk.

``plan_due_job`` answers the usual case without walking slots; ``_plan_walk`` is the general rule. For any
job, active runs and time, both must give the same runs (ids aside), next slot and cancellations."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronos_core.ids import new_id
from chronos_core.models import Job, JobStatus, MisfirePolicy, OverlapPolicy, Run
from chronos_core.planning import Limits, _plan_walk, plan_due_job
from chronos_core.ports import SlotPlan
from chronos_core.retry import RetryPolicy

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SCHEDULES = ["@every 1s", "@every 7s", "@every 1h", "* * * * * *", "*/5 * * * * *", "0 * * * * *",
             "30 2 * * *"]


def _job(schedule: str, next_run_at: datetime, overlap: OverlapPolicy, misfire: MisfirePolicy,
         grace: float, end_at: datetime | None) -> Job:
    return Job(id=new_id(), name="j", type="noop", payload={}, schedule=schedule, timezone="UTC",
               retry=RetryPolicy(), timeout=None, overlap=overlap, misfire=misfire, misfire_grace=grace,
               status=JobStatus.ACTIVE, created_at=T0 - timedelta(days=1), updated_at=T0,
               next_run_at=next_run_at, start_at=T0 - timedelta(days=1), end_at=end_at)


def _shape(plan: SlotPlan) -> tuple[object, ...]:
    def run(r: Run) -> tuple[object, ...]:
        return (r.job_id, r.scheduled_for, r.trigger, r.attempt, r.status, r.created_at, r.due_at,
                r.finished_at, r.error)
    return tuple(run(r) for r in plan.runs), plan.next_run_at, tuple(plan.cancel)


@settings(max_examples=400, deadline=None)
@given(schedule=st.sampled_from(SCHEDULES),
       late=st.floats(min_value=0, max_value=20_000, allow_nan=False),
       overlap=st.sampled_from(list(OverlapPolicy)),
       misfire=st.sampled_from(list(MisfirePolicy)),
       grace=st.sampled_from([0.0, 1.0, 5.0, 3600.0]),
       active=st.lists(st.sampled_from(["r1", "r2"]), max_size=2, unique=True),
       end_in=st.one_of(st.none(), st.floats(min_value=-5, max_value=30, allow_nan=False)))
def test_fast_path_plans_as_the_general_walk(schedule: str, late: float, overlap: OverlapPolicy,
                                             misfire: MisfirePolicy, grace: float, active: list[str],
                                             end_in: float | None) -> None:
    slot = T0
    now = slot + timedelta(seconds=late)
    end_at = None if end_in is None else now + timedelta(seconds=end_in)
    job = _job(schedule, slot, overlap, misfire, grace, end_at)
    limits = Limits()
    cutoff = now - timedelta(seconds=grace)
    assert _shape(plan_due_job(job, active, now, limits)) == _shape(
        _plan_walk(job, active, now, limits, cutoff))


def test_the_usual_case_queues_one_run_and_moves_to_the_next_slot() -> None:
    job = _job("@every 1s", T0, OverlapPolicy.ALLOW, MisfirePolicy.FIRE_ONCE, 5.0, None)
    plan = plan_due_job(job, ["still-running"], T0 + timedelta(milliseconds=300))
    assert [(r.scheduled_for, r.status.value) for r in plan.runs] == [(T0, "queued")]
    assert plan.next_run_at == T0 + timedelta(seconds=1)
    assert plan.cancel == []


def _covered(plan: SlotPlan) -> tuple[set[datetime], list[tuple[datetime, datetime]]]:
    """The slots a plan records one by one, and the ranges its summary records name."""
    import re

    one_by_one: set[datetime] = set()
    ranges: list[tuple[datetime, datetime]] = []
    for r in plan.runs:
        m = re.search(r"slots from (\S+) (?:up to|to) (\S+) were", r.error or "")
        if m:
            ranges.append((datetime.fromisoformat(m[1]), datetime.fromisoformat(m[2])))
        else:
            one_by_one.add(r.scheduled_for)
    return one_by_one, ranges


@pytest.mark.parametrize(("days", "misfire"), [(3.0, MisfirePolicy.FIRE_ONCE), (1.5, MisfirePolicy.SKIP)])
def test_after_a_long_outage_every_slot_is_in_a_record(days: float, misfire: MisfirePolicy) -> None:
    """A per-second job down for days: each slot is listed, fired or inside a summary's range (the
    summary of a walk too long to count used to end where the leap landed, before slots it then
    dropped from the list)."""
    job = _job("* * * * * *", T0 + timedelta(seconds=1), OverlapPolicy.ALLOW, misfire, 5.0, None)
    now = T0 + timedelta(days=days)
    plan = plan_due_job(job, [], now)
    one_by_one, ranges = _covered(plan)
    assert len(ranges) == 1
    t = T0 + timedelta(seconds=1)
    uncovered = []
    while t <= now:
        if t not in one_by_one and not any(a <= t <= b for a, b in ranges):
            uncovered.append(t)
        t += timedelta(seconds=1)
    assert uncovered == []
    assert plan.next_run_at == now + timedelta(seconds=1)


def test_the_leap_over_a_long_outage_keeps_every_jittered_slot_still_on_time() -> None:
    """A per-second job with jitter an hour, three days behind: the walk leaps over the outage, and must
    land early enough that no slot whose jittered time is still within the grace is leapt over
    (review-burst2 S1: leaping to the plain cutoff lost the slots of the last jitter window)."""
    from chronos_core.models import RunStatus
    from chronos_core.planning import jitter_offset

    jitter, grace = 3600, 5.0
    job = dataclasses.replace(_job("* * * * * *", T0 + timedelta(seconds=1), OverlapPolicy.ALLOW,
                                   MisfirePolicy.FIRE_ONCE, grace, None), jitter=jitter)
    now = T0 + timedelta(days=3)
    cutoff = now - timedelta(seconds=grace)
    plan = plan_due_job(job, [], now)
    queued = {r.scheduled_for for r in plan.runs if r.status is RunStatus.QUEUED}
    on_time = set()
    s = now - timedelta(seconds=jitter + 10)
    while s <= now:
        if s >= cutoff or s + jitter_offset(job.id, s, jitter) >= cutoff:
            on_time.add(s)
        s += timedelta(seconds=1)
    assert len(on_time) > 100  # the case has slots the leap could lose
    assert on_time <= queued
