"""``Chronos``: the engines and the operations wired together, for embedding in a Python program.

::

    async with Chronos.embedded() as chronos:
        await chronos.schedule(report, "0 6 * * *", kwargs={"day": "yesterday"})   # a python job
        job = await chronos.jobs.create({"name": "hello", "type": "shell",
                                         "schedule": "*/1 * * * * *", "payload": {"command": "echo hi"}})
        async for event in chronos.events.subscribe(job_id=job.id): ...

``Chronos.embedded()`` keeps everything in memory; ``database_url=`` makes the store durable. Tests and
advanced users build a ``Chronos`` from their own adapters with the constructor.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from chronos_core import (
    BackendUnavailable,
    Clock,
    DispatchQueue,
    EventBus,
    Events,
    Executor,
    FakeClock,
    InvalidArgument,
    Job,
    Jobs,
    JobStatus,
    JobTypes,
    Payload,
    Run,
    Runs,
    RunStatus,
    Store,
    SystemClock,
    function_ref,
)
from chronos_core.hookspec import NotifyRule
from chronos_core.ids import new_id
from chronos_core.models import ACTIVE_RUN_STATUSES
from chronos_core.ports import NotifyChannel

from . import compose
from .settings import EngineSettings, Settings

if TYPE_CHECKING:
    from chronos_adapters.executors import ExecutorConfig

__all__ = ["Chronos", "Gauges", "Served"]

log = logging.getLogger("chronos")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@dataclass(frozen=True)
class Gauges:
    """The engines' figures for ``/metrics`` (None: that engine does not run here, or the queue cannot
    tell its depth)."""

    queue_depth: int | None
    fire_lag: float | None
    active_runs: int | None


class Served(Protocol):
    """What the API uses of a Chronos: the :class:`Chronos` itself (one event loop for the API and the
    engines), or a ``chronos_app.front.ChronosFront`` (the API on a loop of its own)."""

    settings: EngineSettings
    clock: Clock
    job_types: JobTypes
    executors: dict[str, Executor]
    bus: EventBus
    queue: DispatchQueue
    store: Store
    jobs: Jobs
    runs: Runs
    events: Events

    @property
    def allow_shell(self) -> bool: ...

    @property
    def started(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self, grace: float | None = None) -> None: ...

    async def gauges(self) -> Gauges: ...

    async def on_engines(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro`` run on the engines' event loop (what it starts stays there)."""
        ...


class Chronos:
    """A running Chronos: ``jobs``, ``runs`` and ``events`` for the user; a scheduler and a worker
    inside (either can be switched off, e.g. for an API-only process)."""

    def __init__(
        self,
        *,
        store: Store,
        queue: DispatchQueue,
        bus: EventBus,
        executors: Iterable[Executor] = (),
        clock: Clock | None = None,
        job_types: JobTypes | None = None,
        scheduler: bool = True,
        worker: bool = True,
        notifier: bool | None = None,
        notify_channels: Iterable[NotifyChannel] = (),
        settings: EngineSettings | None = None,
        default_notify: Sequence[NotifyRule | dict[str, Any]] | None = None,
        **knobs: Any,
    ) -> None:
        """``settings`` (an :class:`EngineSettings`, or the service's :class:`Settings`) and ``knobs``
        over it (any of its fields as keywords: ``concurrency=``, ``lease=``, ``allow_shell=``,
        ``history_max_age=``...; ``default_notify`` is ``notify_default``) configure every engine
        (``chronos_app.compose`` builds them); an unknown keyword is a ``TypeError``."""
        if default_notify is not None:
            knobs["notify_default"] = default_notify
        self.settings = compose.engine_settings(settings, knobs)
        self.store = store
        self.queue = queue
        self.bus = bus
        self.clock = clock or SystemClock()
        self.job_types = job_types or JobTypes()
        # shell jobs refused here run with no executor (compose.guard_executors): a run of one queued by
        # another process, or before a restart, fails without starting anything
        self.executors: dict[str, Executor] = compose.guard_executors(
            {e.type_name: e for e in executors}, self.allow_shell)
        self.jobs = Jobs(store, queue, bus, self.clock, self.job_types, allow_shell=self.allow_shell,
                         executors=self.executors)
        self.runs = Runs(store, bus, self.clock)
        self.events = Events(bus, store, self.clock)
        self.shutdown_grace = self.settings.shutdown_grace
        self.default_notify = list(self.settings.notify_default)  # for jobs that set none
        # delivers notifications, chained runs and auto-pauses (by default where the scheduler runs)
        self.notify_channels = {c.channel: c for c in notify_channels}
        engines = compose.build_engines(
            self.settings, store=store, queue=queue, bus=bus, clock=self.clock, executors=self.executors,
            job_types=self.job_types, channels=self.notify_channels, refuse=self._refuse,
            scheduler=scheduler, worker=worker, notifier=scheduler if notifier is None else notifier)
        self.scheduler, self.worker, self.notifier = engines.scheduler, engines.worker, engines.notifier
        self._started = False
        # The CLI roles wait at start-up for a backend that cannot be reached yet (the database or broker
        # is starting too, or restarting), trying again with a log line, until ``stopping()`` says to
        # give up; a program embedding Chronos gets the error at once (the default).
        self.wait_for_backends = False
        self.stopping: Callable[[], bool] = lambda: False
        self._opened: list[Callable[[], Awaitable[None]]] = []
        self._declared: list[dict[str, Any]] = []  # @scheduled before start: applied by start()

    @property
    def allow_shell(self) -> bool:
        """Whether shell jobs are accepted and run here (the one source: ``settings.allow_shell``)."""
        return self.settings.allow_shell

    @property
    def started(self) -> bool:
        return self._started

    @classmethod
    def embedded(
        cls,
        database_url: str | None = None,
        *,
        allow_shell: bool = True,
        executors: Iterable[Executor] | None = None,
        executor_config: ExecutorConfig | None = None,
        **options: Any,
    ) -> Chronos:
        """Everything in this process: the in-process queue and bus, the memory store (or, with
        ``database_url``, a durable SQL store), and the built-in executors (configured by
        ``executor_config``) unless ``executors`` are given. ``options``: the constructor's keywords
        (every engine knob, ``clock=``, ``scheduler=``...)."""
        params = inspect.signature(cls.__init__).parameters
        knobs = {k: options.pop(k) for k in list(options) if k not in params or k == "default_notify"}
        if "default_notify" in knobs:
            knobs["notify_default"] = knobs.pop("default_notify")
        compose.engine_settings(None, knobs, called="Chronos.embedded()")  # a bad name: said at once
        settings = Settings.given(database_url=database_url or "memory", bus="memory",
                                  allow_shell=allow_shell, **knobs)
        if executors is None:
            executors = compose.build_executors(executor_config)
        if "notify_channels" not in options:
            options["notify_channels"] = compose.build_notify_channels(executor_config)
        chronos = cls(store=compose.build_store(settings), queue=compose.build_queue(settings),
                      bus=compose.build_bus(settings), executors=executors, settings=settings, **options)
        if executor_config is not None:  # its SMTP password and SQL URLs are masked in every job's output
            chronos.job_types.add_service_secrets(executor_config.secrets())
        return chronos

    def register_job_type(self, name: str, payload_model: type[Payload], executor: Executor) -> None:
        """Add a job type: its payload model (validated on create) and the executor that runs it."""
        self.job_types.register(name, payload_model)
        executor = compose.guard_executors({name: executor}, self.allow_shell)[name]
        self.executors[name] = executor
        if self.worker is not None:
            self.worker.executors[name] = executor

    async def start(self) -> None:
        """Open the adapters and start the engines. With ``wait_for_backends``, a store, queue or bus
        that is unreachable (:class:`BackendUnavailable`) is waited for; if ``stopping()`` turns true
        meanwhile, what was opened is closed again and ``started`` stays False."""
        if self._started:
            return
        self._opened = []
        try:
            steps: list[tuple[str, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = [
                ("the store", self.store.start, self.store.stop),
                ("the dispatch queue", self.queue.start, self.queue.stop),
                ("the event bus", self.bus.start, self.bus.stop)]
            steps += [(f"the {name} executor", e.start, e.stop) for name, e in self.executors.items()]
            for what, open_, close in steps:
                if not await self._start_step(what, open_):
                    return await self._close_opened()
                self._opened.append(close)
            if self.worker is not None:
                if not await self._start_step("the worker", self.worker.start):
                    return await self._close_opened()
                self._opened.append(self.worker.stop)
            if self.scheduler is not None:
                if not await self._start_step("the scheduler", self._start_scheduler):
                    return await self._close_opened()
                self._opened.append(self.scheduler.stop)
            if self.notifier is not None:
                for channel in self.notify_channels.values():
                    await channel.start()
                    self._opened.append(channel.stop)
                await self.notifier.start()
        except BaseException:
            await self._close_opened()
            raise
        self._opened = []
        self._started = True
        declared, self._declared = self._declared, []
        if declared:  # @scheduled functions, declared before start
            await self.jobs.apply(declared)

    async def _start_scheduler(self) -> None:
        assert self.scheduler is not None
        await self._warn_of_shell_jobs()
        await self.scheduler.start()

    async def _start_step(self, what: str, step: Callable[[], Awaitable[None]]) -> bool:
        """Run one start-up step; with ``wait_for_backends``, again while a backend is unreachable.
        False if ``stopping()`` turned true before it succeeded."""
        pause, tries = 0.5, 0
        while True:
            if self.stopping():
                log.info("stopping before start-up completed (%s was not reachable)", what)
                return False
            try:
                await step()
                if tries:
                    log.info("%s is reachable again: starting", what)
                return True
            except BackendUnavailable as exc:  # the store or the broker
                if not self.wait_for_backends:
                    raise
                tries += 1
                if tries == 1:
                    log.warning("cannot start yet: %s is unreachable (%s); waiting for it, trying again "
                                "every few seconds", what, exc)
                elif tries % 12 == 0:  # about once a minute
                    log.warning("still waiting for %s (%d tries): %s", what, tries, exc)
            for _ in range(round(pause / 0.1)):  # the pause, watching for a stop request
                if self.stopping():
                    break
                await asyncio.sleep(0.1)
            pause = min(pause * 2, 5.0)

    async def _close_opened(self) -> None:
        opened, self._opened = self._opened, []
        for close in reversed(opened):
            try:
                await close()
            except Exception as exc:  # closing after a failed start: nothing more to do about it
                log.debug("closing after a failed start: %s", exc)

    def _refuse(self, job: Job) -> str | None:
        return compose.shell_refusal(job.type, self.allow_shell)

    async def _warn_of_shell_jobs(self) -> None:
        """With shell off, stored shell jobs cannot run: say which, once, at start-up (their slots are
        recorded as skipped, see ``_refuse``)."""
        if self.allow_shell:
            return
        names: list[str] = []
        after = None
        while page := await self.store.list_jobs(type="shell", after=after, limit=500):
            names.extend(j.name for j in page if j.status is JobStatus.ACTIVE)
            after = page[-1].id
        if names:
            shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            log.warning("%d stored shell job(s) cannot run: %s; their slots are recorded as skipped "
                        "(set CHRONOS_ALLOW_SHELL=true to run them)", len(names), shown)

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let running attempts finish for ``grace`` seconds, cancel what is left (it is
        recorded as cancelled), then close every adapter."""
        if not self._started:
            return
        self._started = False
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.notifier is not None:
            await self.notifier.stop()
            for channel in self.notify_channels.values():
                await channel.stop()
        if self.worker is not None:
            await self.worker.stop(self.shutdown_grace if grace is None else grace)
        for executor in self.executors.values():
            await executor.stop()
        await self.bus.stop()
        await self.queue.stop()
        await self.store.stop()

    async def gauges(self) -> Gauges:
        """Queue depth, the scheduler's last fire lag, the runs executing here: read on this Chronos's
        loop (the API on a loop of its own asks through ``ChronosFront.gauges``)."""
        return Gauges(queue_depth=await self.queue.depth(),
                      fire_lag=self.scheduler.stats.last_lag if self.scheduler is not None else None,
                      active_runs=self.worker.active if self.worker is not None else None)

    async def on_engines(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro`` awaited: this is the engines' loop (see ``ChronosFront.on_engines``)."""
        return await coro

    def declare(self, specs: Iterable[Mapping[str, Any]]) -> None:
        """Jobs to apply (:meth:`Jobs.apply`: created, or updated by name) when :meth:`start` runs (what
        ``chronos serve --jobs FILE`` does); applied at once if started already is not supported."""
        if self._started:
            raise RuntimeError("declare() is for jobs applied at start(); use 'await chronos.jobs.apply'")
        self._declared.extend(dict(s) for s in specs)

    # python functions --------------------------------------------------------------------------------
    def python_spec(self, func: Callable[..., Any], schedule: str | None = None, *, name: str | None = None,
                    args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    isolation: Literal["thread", "process"] = "thread", **fields: Any) -> dict[str, Any]:
        """The job definition of ``schedule(func, ...)`` (and allows ``func`` on this process's python
        executor, whatever its module allow-list: the program hands the function over itself)."""
        try:
            ref = function_ref(func)
        except ValueError as exc:
            raise InvalidArgument.single(("function",), str(exc)) from None
        executor = self.executors.get("python")
        allow = getattr(executor, "allow", None)
        if callable(allow):
            allow(ref)
        return {"name": name or ref, "type": "python", "schedule": schedule, **fields,
                "payload": {"function": ref, "args": list(args), "kwargs": dict(kwargs or {}),
                            "isolation": isolation}}

    async def schedule(self, func: Callable[..., Any], schedule: str | None = None, *,
                       name: str | None = None, args: Sequence[Any] = (),
                       kwargs: Mapping[str, Any] | None = None,
                       isolation: Literal["thread", "process"] = "thread", **fields: Any) -> Job:
        """Run ``func`` (a module-level function, ``async`` or not) on ``schedule`` (cron, ``@every 30s``,
        ``@daily``...; None: only by hand) with JSON ``args``/``kwargs``; ``fields`` are any other job
        fields (``timezone``, ``retry``, ``timeout``, ``overlap``, ``description``...). The job is named
        after the function's import path unless ``name`` is given; if a job of that name exists it is
        updated (unchanged if it already is so), so a program may declare its schedules at every start.
        A lambda, closure or nested function is refused (:class:`InvalidArgument`): another process
        could not import it."""
        spec = self.python_spec(func, schedule, name=name, args=args, kwargs=kwargs, isolation=isolation,
                                **fields)
        return (await self.jobs.apply([spec])).jobs[0]

    def scheduled(self, schedule: str | None = None, **options: Any) -> Callable[[F], F]:
        """Decorator form of :meth:`schedule` (same options), for use before ``start()``, which applies
        it; the function is returned unchanged. Started already: ``await chronos.schedule(...)``."""
        def decorate(func: F) -> F:
            spec = self.python_spec(func, schedule, **options)
            if self._started:
                raise RuntimeError("@scheduled registers before start(); on a running Chronos use "
                                   "'await chronos.schedule(func, ...)'")
            self._declared.append(spec)
            return func
        return decorate

    async def run_now(self, target: Callable[..., Any] | Job | str, *, args: Sequence[Any] | None = None,
                      kwargs: Mapping[str, Any] | None = None, wait: bool = False,
                      timeout: float | None = None) -> Run:  # noqa: ASYNC109
        """Run a job now: ``target`` is a job, a job name, or a function (its job, named after it, made
        without a schedule if there is none). With ``args``/``kwargs`` other than the job's, the run gets
        a one-off job of its own (named ``<job> #<id>``, no schedule) so that its retries keep those
        arguments and its history stays. Returns the run as queued, or with ``wait`` as it ended
        (:meth:`wait`)."""
        if isinstance(target, Job):
            job = target
        elif isinstance(target, str):
            job = await self.jobs.get_by_name(target)
        else:
            spec = self.python_spec(target, None, args=args or (), kwargs=kwargs)
            try:
                job = await self.jobs.get_by_name(spec["name"])
            except LookupError:
                job = await self.jobs.create(spec)
        if args is not None or kwargs is not None:
            payload = dict(job.payload)
            if args is not None:
                payload["args"] = list(args)
            if kwargs is not None:
                payload["kwargs"] = dict(kwargs)
            if self.jobs.types.validate(job.type, payload) != job.payload:
                spec_ = job.spec().model_dump(by_alias=True)
                spec_.update(name=f"{job.name} #{new_id()[-8:]}", payload=payload, schedule=None,
                             description=f"one-off run of {job.name} (run_now with other arguments)")
                job = await self.jobs.create(spec_)
        run = await self.jobs.trigger(job.id)
        return await self.wait(run, timeout=timeout) if wait else run

    async def wait(self, run: Run | str, *, timeout: float | None = None,  # noqa: ASYNC109
                   retries: bool = False) -> Run:
        """The run once it has ended (``TimeoutError`` after ``timeout`` seconds). With ``retries``, the
        slot's last attempt once no retry of it is left (with a fake clock, retries need time moved on:
        see :meth:`advance`)."""
        run_id = run if isinstance(run, str) else run.id
        async with asyncio.timeout(timeout):
            current = await self.runs.get(run_id)
            async with self.events.subscribe(job_id=current.job_id) as sub:
                while True:
                    current = await self.runs.get(current.id)
                    if current.finished and retries:
                        later = await self._next_attempt(current)
                        if later is not None:
                            current = later
                            continue
                    if current.finished:
                        return current
                    # an event of the job, or a second (a missed event must not hang the wait)
                    async with asyncio.timeout(1.0):
                        try:
                            await sub.__anext__()
                        except TimeoutError:
                            pass

    async def _next_attempt(self, run: Run) -> Run | None:
        for other in await self.runs.list(job_id=run.job_id, since=run.scheduled_for,
                                          until=run.scheduled_for, limit=100):
            if other.attempt == run.attempt + 1 and other.scheduled_for == run.scheduled_for:
                return other
        return None

    async def advance(self, seconds: float = 0.0, *, settle: float = 60.0, **units: float) -> datetime:
        """Move a :class:`FakeClock` on by ``seconds`` (and ``minutes=``, ``hours=``...) the way time
        would pass: to each due time in turn, waiting each time until every run due by then has ended
        (retries included); then to the end. For users' tests: a day of a job's slots and retries in
        milliseconds. ``TimeoutError`` if runs are still going after ``settle`` real seconds at a step."""
        clock = self.clock
        if not isinstance(clock, FakeClock):
            raise TypeError("advance() needs Chronos.embedded(clock=FakeClock(...))")
        end = clock.now() + timedelta(seconds=seconds, **units)
        while True:
            await self.settle(settle)
            due = await self.store.next_due_time()
            if due is None or due > end:
                break
            if due > clock.now():
                clock.set(due)
            else:  # due, not taken yet (the scheduler is on its way): let it run
                await asyncio.sleep(0.001)
        if end > clock.now():
            clock.set(end)
        await self.settle(settle)
        return clock.now()

    async def settle(self, limit: float = 60.0) -> None:
        """Wait until nothing is due now and no run is queued for now or running."""
        async with asyncio.timeout(limit):
            while True:
                await asyncio.sleep(0.001)
                now = self.clock.now()
                due = await self.store.next_due_time()
                if due is not None and due <= now:
                    continue
                active = await self.store.list_runs(None, status=ACTIVE_RUN_STATUSES, limit=1000)
                if all(r.status is RunStatus.QUEUED and r.due_at > now for r in active):
                    return

    async def __aenter__(self) -> Chronos:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
