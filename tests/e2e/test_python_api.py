"""The one-line Python API through the real ``Chronos``: ``schedule`` / ``@scheduled`` / ``run_now`` /
``wait``, ``jobs.apply`` (jobs as code) and the fake-clock pattern of users' tests (``advance``)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chronos_adapters.executors import ExecutorConfig
from chronos_app import Chronos
from chronos_core import FakeClock, InvalidArgument, InvalidJob, JobStatus, RunStatus
from tests.executors import pyjobs
from tests.executors.pyjobs import agreet, flaky, greet, report

MOD = "tests.executors.pyjobs"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


async def test_the_issue_snippet_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    async with Chronos.embedded(database_url=url) as chronos:
        job = await chronos.schedule(report, "0 6 * * *", timezone="Europe/Berlin",
                                     kwargs={"day": "yesterday"}, retry={"strategy": "exponential",
                                     "max_attempts": 3, "delay": 10})
        assert job.name == f"{MOD}:report" and job.type == "python" and job.timezone == "Europe/Berlin"
        assert job.payload == {"function": f"{MOD}:report", "args": [], "kwargs": {"day": "yesterday"},
                               "isolation": "thread"}
        assert job.retry.max_attempts == 3 and job.next_run_at is not None
        run = await chronos.run_now(report, kwargs={"day": "today"})
        done = await chronos.wait(run, timeout=30)
        assert done.status is RunStatus.SUCCEEDED, done.error
        assert done.output.splitlines()[0] == "building today"
        assert (await chronos.jobs.get(job.id)).payload["kwargs"] == {"day": "yesterday"}  # untouched
    async with Chronos.embedded(database_url=url) as chronos:  # durable: a second start finds it all
        again = await chronos.schedule(report, "0 6 * * *", timezone="Europe/Berlin",
                                       kwargs={"day": "yesterday"}, retry={"strategy": "exponential",
                                       "max_attempts": 3, "delay": 10})
        assert again.id == job.id and again.updated_at == job.updated_at  # unchanged: not rewritten
        assert (await chronos.runs.get(run.id)).status is RunStatus.SUCCEEDED


async def test_schedule_again_updates_by_name() -> None:
    async with Chronos.embedded() as chronos:
        first = await chronos.schedule(greet, "@every 30s")
        second = await chronos.schedule(greet, "@every 1m", kwargs={"name": "you"})
        named = await chronos.schedule(greet, "@hourly", name="greet-hourly")
        assert second.id == first.id and second.schedule == "@every 1m"
        assert second.payload["kwargs"] == {"name": "you"}
        assert named.id != first.id and named.name == "greet-hourly"
        assert len(await chronos.jobs.list()) == 2


async def test_run_now_of_a_function_and_of_an_async_function() -> None:
    async with Chronos.embedded() as chronos:
        done = await chronos.run_now(greet, wait=True, timeout=30)
        adone = await chronos.run_now(agreet, kwargs={"name": "loop"}, wait=True, timeout=30)
        other = await chronos.run_now(agreet, kwargs={"name": "other"}, wait=True, timeout=30)
        same = await chronos.run_now(agreet, kwargs={"name": "loop"}, wait=True, timeout=30)
        jobs = {j.name: j for j in await chronos.jobs.list()}
    assert done.status is RunStatus.SUCCEEDED and (done.output, done.result) == ("hello world", "hello world")
    assert adone.status is RunStatus.SUCCEEDED and (adone.output, adone.result) == ("", "async hello loop")
    # a function without a job gets one (no schedule) with these arguments; other arguments get a
    # one-off job of their own, so that their retries keep them
    assert jobs[f"{MOD}:greet"].schedule is None
    assert jobs[f"{MOD}:agreet"].payload["kwargs"] == {"name": "loop"}
    assert same.job_id == adone.job_id == jobs[f"{MOD}:agreet"].id
    [one_off] = [n for n in jobs if n.startswith(f"{MOD}:agreet #")]
    assert other.job_id == jobs[one_off].id and other.result == "async hello other"
    assert jobs[one_off].payload["kwargs"] == {"name": "other"} and jobs[one_off].schedule is None


def _nested() -> Any:
    def inner() -> None: ...

    return inner


async def test_what_another_process_could_not_import_is_refused() -> None:
    async with Chronos.embedded() as chronos:
        with pytest.raises(InvalidArgument, match="lambda"):
            await chronos.schedule(lambda: None, "@every 1s")
        with pytest.raises(InvalidArgument, match="inside a function"):
            await chronos.schedule(_nested(), "@every 1s")
        assert await chronos.jobs.list() == []


async def test_a_scheduled_function_is_allowed_whatever_the_module_allow_list() -> None:
    async with Chronos.embedded(executor_config=ExecutorConfig(python_modules=())) as chronos:
        done = await chronos.run_now(greet, wait=True, timeout=30)
        assert done.status is RunStatus.SUCCEEDED
        with pytest.raises(InvalidJob, match="allow-list"):  # by name only: not handed over
            await chronos.jobs.create({"name": "other", "type": "python",
                                       "payload": {"function": f"{MOD}:where"}})


async def test_the_decorator_declares_before_start() -> None:
    chronos = Chronos.embedded()
    decorated = chronos.scheduled("@every 30s", kwargs={"name": "deco"})(greet)
    assert decorated is greet
    async with chronos:
        job = await chronos.jobs.get_by_name(f"{MOD}:greet")
        assert job.schedule == "@every 30s" and job.payload["kwargs"] == {"name": "deco"}
        with pytest.raises(RuntimeError, match="before start"):
            chronos.scheduled("@every 1m")(agreet)


async def test_a_fake_clock_runs_slots_and_retries_in_order() -> None:
    pyjobs.seen.pop("fc", None)
    async with Chronos.embedded(clock=FakeClock(T0)) as chronos:
        job = await chronos.schedule(flaky, "*/10 * * * *", kwargs={"counter": "fc", "fail_times": 2},
                                     retry={"strategy": "exponential", "max_attempts": 3, "delay": 60})
        now = await chronos.advance(minutes=15)
        runs = sorted(await chronos.jobs.history(job.id), key=lambda r: r.id)
    assert now == T0 + timedelta(minutes=15)
    slot = T0 + timedelta(minutes=10)
    assert [(r.scheduled_for, r.attempt, r.status) for r in runs] == [
        (slot, 1, RunStatus.FAILED), (slot, 2, RunStatus.FAILED), (slot, 3, RunStatus.SUCCEEDED)]
    assert [r.started_at for r in runs] == [slot, slot + timedelta(seconds=60),
                                            slot + timedelta(seconds=180)]


async def test_wait_with_retries_follows_the_slot_to_its_last_attempt() -> None:
    pyjobs.seen.pop("wr", None)
    async with Chronos.embedded() as chronos:
        await chronos.schedule(flaky, kwargs={"counter": "wr", "fail_times": 1},
                               retry={"strategy": "immediate", "max_attempts": 2})
        run = await chronos.run_now(flaky)
        last = await chronos.wait(run, timeout=30, retries=True)
    assert last.attempt == 2 and last.status is RunStatus.SUCCEEDED


async def test_advance_needs_a_fake_clock() -> None:
    async with Chronos.embedded() as chronos:
        with pytest.raises(TypeError, match="FakeClock"):
            await chronos.advance(1)


# jobs as code ---------------------------------------------------------------------------------------
def _shell(name: str, command: str = "true", **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "shell", "payload": {"command": command}, **fields}


async def test_apply_creates_updates_keeps_and_prunes() -> None:
    async with Chronos.embedded() as chronos:
        first = await chronos.jobs.apply([_shell("a", schedule="@every 1m"), _shell("b")])
        assert (first.created, first.updated, first.unchanged, first.deleted) == (["a", "b"], [], [], [])
        same = await chronos.jobs.apply([_shell("a", schedule="@every 1m"), _shell("b")])
        assert (same.created, same.updated, same.unchanged, same.changed) == ([], [], ["a", "b"], False)
        assert [j.updated_at for j in same.jobs] == [j.updated_at for j in first.jobs]
        await chronos.jobs.create(_shell("by-hand"))
        plan = await chronos.jobs.apply([_shell("a", "echo changed"), _shell("c")], prune=True,
                                        dry_run=True)
        assert (plan.created, plan.updated, plan.deleted) == (["c"], ["a"], ["b", "by-hand"])
        assert plan.jobs == [] and {j.name for j in await chronos.jobs.list()} == {"a", "b", "by-hand"}
        done = await chronos.jobs.apply([_shell("a", "echo changed"), _shell("c")], prune=True)
        assert (done.created, done.updated, done.deleted) == (["c"], ["a"], ["b", "by-hand"])
        jobs = {j.name: j for j in await chronos.jobs.list()}
    assert set(jobs) == {"a", "c"} and jobs["a"].payload["command"] == "echo changed"
    assert jobs["a"].id == first.jobs[0].id and jobs["a"].schedule is None


async def test_apply_validates_everything_first() -> None:
    async with Chronos.embedded() as chronos:
        with pytest.raises(InvalidJob) as info:
            await chronos.jobs.apply([_shell("a"), _shell("b", schedule="every day"), _shell("a")])
        assert {e.loc for e in info.value.errors} == {(1, "schedule"), (2, "name")}
        assert await chronos.jobs.list() == []


async def test_apply_keeps_a_status_set_by_hand_unless_given() -> None:
    async with Chronos.embedded() as chronos:
        [job] = (await chronos.jobs.apply([_shell("a", schedule="@every 1m")])).jobs
        await chronos.jobs.pause(job.id)
        kept = await chronos.jobs.apply([_shell("a", schedule="@every 1m")])
        assert kept.unchanged == ["a"] and (await chronos.jobs.get(job.id)).status is JobStatus.PAUSED
        resumed = await chronos.jobs.apply([_shell("a", schedule="@every 1m", status="active")])
        assert resumed.updated == ["a"] and (await chronos.jobs.get(job.id)).status is JobStatus.ACTIVE


# the README's testing example --------------------------------------------------------------------
README = Path(__file__).resolve().parents[2] / "README.md"


async def test_the_readme_fake_clock_example_runs(tmp_path: Path) -> None:
    text = README.read_text()
    block = text.split("<!-- fake-clock-example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_fake_clock_example.py").write_text(block)
    sys.path.insert(0, str(tmp_path))
    try:
        import readme_fake_clock_example as example  # type: ignore[import-not-found]

        tests = [getattr(example, n) for n in dir(example) if n.startswith("test_")]
        assert tests
        for test in tests:
            await test()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("readme_fake_clock_example", None)


async def test_a_job_created_elsewhere_between_read_and_write_is_updated_not_a_conflict() -> None:
    from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus, MemoryStore
    from chronos_core import Jobs, JobTypes
    from tests.engine.proxies import Proxy

    store = Proxy(MemoryStore())
    async with Chronos(store=store, queue=MemoryDispatchQueue(), bus=MemoryEventBus()) as chronos:
        # another process declaring the same function at its start: its create lands between this
        # schedule()'s look-up and its write
        other = Jobs(store.inner, chronos.queue, chronos.bus, chronos.clock, JobTypes())
        store.once_before("add_jobs", lambda: other.create(chronos.python_spec(greet, "@every 1m")))
        job = await chronos.schedule(greet, "@every 30s")
        jobs = await chronos.jobs.list()
    assert [j.id for j in jobs] == [job.id] and job.schedule == "@every 30s"  # updated, not refused
    assert store.calls["add_jobs"] == 1
