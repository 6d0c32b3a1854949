"""The pure rules of the hooks: which notices an outcome adds, and which outcomes need the hooks at all."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from types import SimpleNamespace

from chronos_core.hooks import OutcomeHooks, outcome_hooks, outcome_notices, run_facts
from chronos_core.hookspec import ChainRule, NotifyRule
from chronos_core.models import JobSummary, RunStatus

T = datetime(2030, 1, 1, tzinfo=UTC)
_ids = count()


def rule(*on: str) -> NotifyRule:
    return NotifyRule.model_validate({"on": list(on), "email": {"to": ["ops@example.com"]}})


def notices(hooks: OutcomeHooks, status: RunStatus, final: bool, failed_before: int = 0) -> list[str]:
    before = JobSummary(consecutive_failed_slots=failed_before)
    after = JobSummary(consecutive_failed_slots=0 if status is RunStatus.SUCCEEDED
                       else failed_before + (final and status in (RunStatus.FAILED, RunStatus.TIMED_OUT)))
    facts = run_facts("r1", status, 1, "schedule", T, T, T, 1, "e", "out")
    return sorted(f"{n.kind.value}:{n.event}" for n in outcome_notices(
        hooks, job_id="j", run=facts, status=status, final=final, before=before, after=after, now=T,
        new_id=lambda: str(next(_ids))))


def test_failures_notify_only_when_final_and_recovered_only_after_failed_slots() -> None:
    h = OutcomeHooks("job", (rule("failed", "timed_out", "recovered", "succeeded"),))
    assert notices(h, RunStatus.FAILED, final=False) == []
    assert notices(h, RunStatus.FAILED, final=True) == ["notify:failed"]
    assert notices(h, RunStatus.TIMED_OUT, final=True) == ["notify:timed_out"]
    assert notices(h, RunStatus.CANCELLED, final=True) == []
    assert notices(h, RunStatus.SUCCEEDED, final=True) == ["notify:succeeded"]
    assert notices(h, RunStatus.SUCCEEDED, final=True, failed_before=2) == ["notify:recovered",
                                                                           "notify:succeeded"]


def test_the_pause_comes_once_when_failed_slots_reach_n() -> None:
    h = OutcomeHooks("job", (), (), pause_after_failures=3)
    assert notices(h, RunStatus.FAILED, final=True, failed_before=1) == []
    assert notices(h, RunStatus.FAILED, final=True, failed_before=2) == ["pause:paused"]
    assert notices(h, RunStatus.FAILED, final=True, failed_before=3) == []  # already past: once
    assert notices(h, RunStatus.FAILED, final=False, failed_before=2) == []


def test_chains_follow_final_outcomes() -> None:
    h = OutcomeHooks("job", (), (ChainRule(job="b"), ChainRule(on=["failed"], job="c")))
    assert notices(h, RunStatus.SUCCEEDED, final=True) == ["chain:succeeded"]
    assert notices(h, RunStatus.FAILED, final=False) == []
    assert notices(h, RunStatus.FAILED, final=True) == ["chain:failed"]


def test_an_outcome_that_sets_nothing_off_gets_no_hooks() -> None:
    job = SimpleNamespace(name="j", notify=[], then=[], pause_after_failures=None)
    failures_only = [rule("failed")]
    assert outcome_hooks(job, failures_only, RunStatus.SUCCEEDED, True) is None  # the fast path
    assert outcome_hooks(job, failures_only, RunStatus.FAILED, False) is None
    assert outcome_hooks(job, failures_only, RunStatus.FAILED, True) is not None
    assert outcome_hooks(job, [], RunStatus.FAILED, True) is None
    own = SimpleNamespace(name="j", notify=[rule("recovered")], then=[], pause_after_failures=None)
    assert outcome_hooks(own, failures_only, RunStatus.SUCCEEDED, True) is not None  # its own wins
    assert outcome_hooks(own, failures_only, RunStatus.FAILED, True) is None
