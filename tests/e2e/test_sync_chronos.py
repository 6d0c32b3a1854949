"""``SyncChronos``: Chronos from synchronous code, its loop in a background thread, every call blocking,
from any thread; a clean close (also on Ctrl-C in ``run_forever``) that records unfinished runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from chronos_app import SyncChronos
from chronos_core import (
    EventType,
    ExecutionResult,
    Executor,
    FakeClock,
    InvalidArgument,
    Job,
    LogSink,
    Payload,
    Run,
    RunStatus,
)
from tests.executors import pyjobs
from tests.executors.pyjobs import calls_sync_chronos, flaky, greet, polite

MOD = "tests.executors.pyjobs"


def test_the_issue_snippet() -> None:
    with SyncChronos.embedded() as chronos:
        job = chronos.schedule(greet, "*/5 * * * *")
        assert [j.id for j in chronos.jobs.list()] == [job.id] and job.name == f"{MOD}:greet"
        run = chronos.run_now(greet, wait=True, timeout=30)
        assert run.status is RunStatus.SUCCEEDED
        assert (run.output, run.result) == ("hello world", "hello world")
        assert chronos.runs.get(run.id).status is RunStatus.SUCCEEDED
        assert chronos.runs.get(run.id).result == "hello world"
        assert [line for line in chronos.runs.follow(run.id)] == ["hello world"]
    assert chronos.closed


def test_calls_from_many_threads() -> None:
    with SyncChronos.embedded() as chronos:
        def one(i: int) -> RunStatus:
            chronos.schedule(greet, None, name=f"greet-{i}", kwargs={"name": str(i)})
            return chronos.run_now(f"greet-{i}", wait=True, timeout=60).status

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(16)))
        assert statuses == [RunStatus.SUCCEEDED] * 16
        assert len(chronos.jobs.list()) == 16


def test_events_are_an_iterator() -> None:
    with SyncChronos.embedded() as chronos:
        job = chronos.schedule(greet, None)
        with chronos.events.subscribe(job_id=job.id) as events:
            chronos.jobs.trigger(job.id)
            seen = []
            for event in events:
                seen.append(event.type)
                if event.type is EventType.RUN_SUCCEEDED:
                    break
    assert seen[0] is EventType.RUN_QUEUED and EventType.RUN_LOG in seen


def test_the_decorator_before_and_after_start() -> None:
    chronos = SyncChronos.embedded()
    chronos.scheduled("@every 30s")(greet)
    with pytest.raises(InvalidArgument, match="lambda"):
        chronos.scheduled("@every 30s")(lambda: None)
    with chronos:
        assert chronos.jobs.get_by_name(f"{MOD}:greet").schedule == "@every 30s"
        chronos.scheduled("@every 1m", name="later")(greet)
        assert chronos.jobs.get_by_name("later").schedule == "@every 1m"


def test_a_fake_clock_through_the_sync_api() -> None:
    pyjobs.seen.pop("sync-fc", None)
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    with SyncChronos.embedded(clock=FakeClock(t0)) as chronos:
        job = chronos.schedule(flaky, "@every 1m", kwargs={"counter": "sync-fc", "fail_times": 1},
                               retry={"strategy": "immediate", "max_attempts": 2})
        assert chronos.advance(minutes=1) == t0 + timedelta(minutes=1)
        runs = chronos.jobs.history(job.id)
    assert [(r.attempt, r.status) for r in reversed(runs)] == [(1, RunStatus.FAILED),
                                                             (2, RunStatus.SUCCEEDED)]


def test_a_call_from_its_own_loop_is_refused_not_deadlocked() -> None:
    with SyncChronos.embedded() as chronos:
        pyjobs.seen["sync"] = chronos
        run = chronos.run_now(calls_sync_chronos, wait=True, timeout=30)
    assert run.status is RunStatus.FAILED
    assert (run.error or "").startswith("RuntimeError: a SyncChronos call from its own event loop")


def _running(chronos: SyncChronos, run_id: str) -> None:
    """Once the run is running: subscribed first, then its state read, so the start cannot fall between."""
    with chronos.events.subscribe(run_id=run_id) as events:
        if chronos.runs.get(run_id).status is RunStatus.RUNNING:
            return
        for event in events:
            if event.type is EventType.RUN_STARTED:
                return


def test_close_records_unfinished_runs_cancelled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    pyjobs.seen.pop("close", None)
    chronos = SyncChronos.embedded(url).start()
    job = chronos.schedule(polite, kwargs={"key": "close"})
    run = chronos.run_now(job)
    _running(chronos, run.id)
    chronos.close(grace=0.2)
    with SyncChronos.embedded(url) as again:
        after = again.runs.get(run.id)
    assert after.status is RunStatus.CANCELLED and "shut down" in (after.error or "")
    assert pyjobs.seen["close"] == "stopped"  # ctx.cancelled told the thread


def test_ctrl_c_in_run_forever_closes_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    pyjobs.seen.pop("ctrl-c", None)
    chronos = SyncChronos.embedded(url, shutdown_grace=0.2).start()
    run = chronos.run_now(polite, kwargs={"key": "ctrl-c"})
    _running(chronos, run.id)
    assert threading.current_thread() is threading.main_thread()
    main = threading.main_thread().ident

    def interrupt_once_waiting() -> None:  # Ctrl-C, once the main thread is inside run_forever
        while True:
            frame = sys._current_frames().get(main)
            names = []
            while frame is not None:
                names.append(frame.f_code.co_name)
                frame = frame.f_back
            if "run_forever" in names:
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=interrupt_once_waiting)
    timer.start()
    chronos.run_forever()  # returns once Ctrl-C closed it
    timer.join()
    assert chronos.closed
    with SyncChronos.embedded(url) as again:
        assert again.runs.get(run.id).status is RunStatus.CANCELLED


SCRIPT = '''
import sys
sys.path.insert(0, {root!r})
from chronos_app import SyncChronos
from chronos_core import RunStatus
from tests.executors.pyjobs import polite

chronos = SyncChronos.embedded({url!r}, shutdown_grace=0.2).start()
run = chronos.run_now(polite, kwargs={{"key": "exit"}})
while chronos.runs.get(run.id).status is not RunStatus.RUNNING:
    pass
print(run.id, flush=True)
sys.exit(0)  # no close(): the interpreter's exit closes it
'''


def test_the_end_of_the_program_closes_it_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=root, url=url)], capture_output=True,
                         text=True, timeout=60)  # it hung: the pool's thread join came before the close
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[-1]
    with SyncChronos.embedded(url) as again:
        run = again.runs.get(run_id)
    assert run.status is RunStatus.CANCELLED and "shut down" in (run.error or "")


class EchoPayload(Payload):
    text: str


class EchoExecutor(Executor):
    type_name: ClassVar[str] = "echo"
    started = False

    async def start(self) -> None:
        self.started = True

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        await log(EchoPayload.model_validate(job.payload).text)
        return ExecutionResult(ok=True)


def test_register_job_type_before_start() -> None:
    chronos = SyncChronos.embedded()
    executor = EchoExecutor()
    chronos.register_job_type("echo", EchoPayload, executor)
    with chronos:
        assert executor.started  # start() opened it
        job = chronos.jobs.create({"name": "echo", "type": "echo", "payload": {"text": "hi there"}})
        run = chronos.wait(chronos.jobs.trigger(job.id), timeout=30)
        with pytest.raises(RuntimeError, match="before start"):
            chronos.register_job_type("late", EchoPayload, EchoExecutor())
    assert run.status is RunStatus.SUCCEEDED and run.output == "hi there"
