"""The composition root: every adapter and engine of a ``Chronos`` is built here, from one settings object.

* ``Chronos.embedded()`` and the service's container (``chronos serve|api|scheduler|worker``) both build
  their store, dispatch queue (with the Kafka outbox or not), event bus, executors and notification
  channels with the functions below, from a :class:`~chronos_app.settings.Settings` (the embedded one made
  from its arguments, the service's from the environment).
* ``Chronos.__init__`` builds its engines with :func:`build_engines`, from the
  :class:`~chronos_app.settings.EngineSettings` part: every engine parameter is either a collaborator
  (store, queue, bus, clock...) or comes from one setting, as the tables below say (a test enumerates the
  engines' parameters against them, so that a new knob cannot be left unreachable).
* ``allow_shell`` is applied here and nowhere else: :func:`shell_refusal` is the rule; it is what the
  scheduler records a refused slot with, and when shell is off the shell executor is replaced by one that
  fails every run with it (:func:`guard_executors`), so that no shell command starts in this process
  however its run got here (queued by another process, or before a restart). ``Jobs`` refuses to create or
  trigger shell jobs from the same value.

Nothing is opened here: adapters are only constructed; ``Chronos.start()`` opens them. Adapters are
imported where they are built: an embedding program that keeps everything in memory loads no SQLAlchemy
or Kafka client.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from chronos_core import (
    Clock,
    DispatchQueue,
    EventBus,
    ExecutionFailed,
    Executor,
    Job,
    JobTypes,
    Run,
    Scheduler,
    Store,
    Worker,
)
from chronos_core.ids import new_id
from chronos_core.notifier import Notifier
from chronos_core.planning import Limits
from chronos_core.ports import ExecutionResult, LogSink, NotifyChannel
from chronos_core.secrets import MIN_SECRET_LENGTH

from .settings import EngineSettings, Settings

if TYPE_CHECKING:
    from chronos_adapters.executors import ExecutorConfig

__all__ = [
    "ENGINE_RULES",
    "MIN_TOKEN_LENGTH",
    "NOTIFIER_KNOBS",
    "PLANNER_KNOBS",
    "SCHEDULER_KNOBS",
    "SHELL_OFF",
    "WORKER_KNOBS",
    "Engines",
    "RefusedExecutor",
    "build_bus",
    "build_engines",
    "build_executor_config",
    "build_executors",
    "build_job_types",
    "build_notify_channels",
    "build_queue",
    "build_store",
    "engine_settings",
    "executor_settings",
    "guard_executors",
    "load_plugins",
    "refused_executor",
    "shell_refusal",
]

log = logging.getLogger("chronos")

SHELL_OFF = "shell jobs are disabled here (CHRONOS_ALLOW_SHELL is off)"
MIN_TOKEN_LENGTH = 16


# adapters ----------------------------------------------------------------------------------------------
def build_store(settings: Settings) -> Store:
    """The memory store, or the SQL store of ``database_url`` (writing the Kafka outbox's rows in its
    dispatching transactions when :attr:`Settings.dispatch_outbox`)."""
    if settings.store_backend == "memory":
        from chronos_adapters.memory import MemoryStore

        return MemoryStore()
    from chronos_adapters.sql import SqlStore  # imported lazily: only SQL deployments need SQLAlchemy

    assert settings.database_url
    on_dispatch = None
    if settings.dispatch_outbox:
        from chronos_adapters.kafka.outbox import write_outbox  # runs and messages in one transaction

        on_dispatch = write_outbox
    return SqlStore(settings.database_url, pool_size=settings.db_pool_size,
                    output_limit=settings.output_limit, on_dispatch=on_dispatch)


def build_queue(settings: Settings, *, run_relay: bool = True) -> DispatchQueue:
    """The in-process queue, or Kafka's (behind the outbox when :attr:`Settings.dispatch_outbox`; its
    relay runs where ``run_relay`` says: where the scheduler runs)."""
    if settings.bus_backend == "memory":
        from chronos_adapters.memory import MemoryDispatchQueue

        return MemoryDispatchQueue()
    from chronos_adapters.kafka import KafkaDispatchQueue  # needs the kafka extra (aiokafka)

    assert settings.kafka_bootstrap, "CHRONOS_BUS=kafka needs CHRONOS_KAFKA_BOOTSTRAP"
    queue = KafkaDispatchQueue(settings.kafka_bootstrap, topic=settings.kafka_runs_topic,
                               group=settings.kafka_group, partitions=settings.kafka_runs_partitions,
                               max_tries=settings.kafka_max_tries,
                               enable_idempotence=settings.kafka_idempotence,
                               replication_factor=settings.kafka_replication_factor,
                               fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms)
    if not settings.dispatch_outbox:
        return queue
    from chronos_adapters.kafka.outbox import OutboxDispatchQueue, OutboxRelay

    assert settings.database_url
    return OutboxDispatchQueue(queue, OutboxRelay(settings.database_url, queue), run_relay=run_relay)


def build_bus(settings: Settings) -> EventBus:
    if settings.bus_backend == "memory":
        from chronos_adapters.memory import MemoryEventBus

        return MemoryEventBus()
    from chronos_adapters.kafka import KafkaEventBus

    assert settings.kafka_bootstrap, "CHRONOS_BUS=kafka needs CHRONOS_KAFKA_BOOTSTRAP"
    return KafkaEventBus(settings.kafka_bootstrap, topic=settings.kafka_events_topic,
                         partitions=settings.kafka_events_partitions,
                         enable_idempotence=settings.kafka_idempotence,
                         replication_factor=settings.kafka_replication_factor,
                         fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms)


# executors ---------------------------------------------------------------------------------------------
def executor_settings(settings: Settings) -> dict[str, Any]:
    """Every ``ExecutorConfig`` field, from the service's settings (a test checks that none is missing,
    so a new executor option cannot be forgotten here; a name ``ExecutorConfig`` does not have fails
    with ``TypeError``). None: not configured, the executor's own default is kept."""
    return {
        "allow_shell": settings.allow_shell,
        "shell_kill_grace": settings.shell_kill_grace,
        "shell_max_line": settings.shell_max_line,
        "shell_pass_env": tuple(settings.shell_pass_env),
        "http_allow_hosts": tuple(settings.http_allow_hosts),
        "http_timeout": settings.http_timeout,
        "http_max_body": settings.http_max_body,
        "http_max_redirects": settings.http_max_redirects,
        "smtp_max_recipients": settings.email_max_recipients,
        "smtp_host": settings.smtp_host,
        "smtp_port": settings.smtp_port,
        "smtp_user": settings.smtp_user,
        "smtp_password": settings.smtp_password,
        "smtp_starttls": settings.smtp_starttls,
        "smtp_ssl": settings.smtp_ssl,
        "smtp_sender": settings.smtp_sender,
        "smtp_timeout": settings.smtp_timeout,
        "smtp_ca_file": settings.smtp_ca_file,
        "sql_connections": dict(settings.sql_connections),
        "sql_max_rows": settings.sql_max_rows,
        "sql_max_cell": settings.sql_max_cell,
        # the service's allow-list, even when empty (None would allow every module)
        "python_modules": tuple(settings.python_modules),
        "python_threads": settings.python_threads,
        "python_kill_grace": settings.python_kill_grace,
    }


def build_executor_config(settings: Settings) -> ExecutorConfig:
    """The executors' configuration in the service."""
    from chronos_adapters.executors import ExecutorConfig

    return ExecutorConfig(**{k: v for k, v in executor_settings(settings).items() if v is not None})


def build_executors(config: ExecutorConfig | None = None) -> list[Executor]:
    from chronos_adapters.executors import builtin_executors

    return builtin_executors(config)


def build_notify_channels(config: ExecutorConfig | None = None) -> list[NotifyChannel]:
    from chronos_adapters.notify import notify_channels

    return notify_channels(config)


def build_job_types(settings: Settings) -> JobTypes:
    """The job types, with the service's limits, and its secrets to mask in every job's output."""
    types = JobTypes(email_max_recipients=settings.email_max_recipients)
    secrets = settings.secret_values()
    if any(len(s) < MIN_SECRET_LENGTH for s in secrets):
        log.warning("a configured secret (API token, password) is shorter than %d characters: it cannot "
                    "be masked in job output; use a longer one", MIN_SECRET_LENGTH)
    short = [t for t in (*settings.api_tokens, *settings.readonly_tokens) if len(t) < MIN_TOKEN_LENGTH]
    if short:  # failed authentications are not rate-limited: a short token is guessed over the network
        log.warning("%d API token(s) shorter than %d characters: guessable by trying; use long random "
                    "values (openssl rand -hex 24)", len(short), MIN_TOKEN_LENGTH)
    types.add_service_secrets(secrets)
    return types


class RefusedExecutor(Executor):
    """Stands in for the executor of a job type this process must not run: every run fails, not retried,
    with ``reason``, and nothing is started. (:func:`refused_executor` makes one per type.)"""

    type_name: ClassVar[str] = "refused"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        raise ExecutionFailed(self.reason, retryable=False)


def refused_executor(type_name: str, reason: str) -> RefusedExecutor:
    cls = type(f"Refused_{type_name}", (RefusedExecutor,), {"type_name": type_name})
    return cls(reason)


# the shell policy --------------------------------------------------------------------------------------
def shell_refusal(job_type: str, allow_shell: bool) -> str | None:
    """Why a job of this type must not run here (None: it may)."""
    return SHELL_OFF if job_type == "shell" and not allow_shell else None


def guard_executors(executors: Mapping[str, Executor], allow_shell: bool) -> dict[str, Executor]:
    """The executors this process runs jobs with: those of refused types replaced by a
    :class:`RefusedExecutor` (whatever executor or configuration was given for them)."""
    out = dict(executors)
    for name in list(out):
        reason = shell_refusal(name, allow_shell)
        if reason is not None:
            out[name] = refused_executor(name, reason)
    return out


# engines -----------------------------------------------------------------------------------------------
# engine parameter -> the setting it comes from (an EngineSettings field: Chronos keyword, CHRONOS_<NAME>)
SCHEDULER_KNOBS: dict[str, str] = {
    "batch_size": "batch_size",
    "max_sleep": "scheduler_max_sleep",
    "min_interval": "scheduler_min_interval",
    "publish_queued": "publish_queued",
    "history_max_age": "history_max_age",
    "history_max_runs": "history_max_runs",
    "prune_interval": "prune_interval",
    "reap_grace": "reap_grace",
}
PLANNER_KNOBS: dict[str, str] = {  # the fields of planning.Limits (the scheduler's ``limits``)
    "max_slots_listed": "max_slots_listed",
    "max_catch_up": "max_catch_up",
}
WORKER_KNOBS: dict[str, str] = {
    "concurrency": "concurrency",
    "lease": "lease",
    "output_limit": "output_limit",
    "line_limit": "line_limit",
    "output_interval": "output_interval",
    "store_retry_for": "store_retry_for",
}
NOTIFIER_KNOBS: dict[str, str] = {
    "batch_size": "notifier_batch_size",
    "lease": "notifier_lease",
    "interval": "notifier_interval",
    "concurrency": "notifier_concurrency",
    "min_interval": "notifier_min_interval",
}
# engine parameters set by a rule of build_engines rather than passed through (-> the settings they use)
ENGINE_RULES: dict[str, dict[str, tuple[str, ...]]] = {
    "Scheduler": {"limits": tuple(PLANNER_KNOBS.values()), "max_queued": ("max_queued", "concurrency"),
                  "redispatch_after": ("redispatch_after",), "default_notify": ("notify_default",),
                  "refuse": ("allow_shell",)},
    "Worker": {"owner": ("worker_name",), "default_notify": ("notify_default",)},
    "Notifier": {"owner": ("worker_name",), "default_notify": ("notify_default",)},
}
# settings Chronos itself uses (not an engine's parameter)
CHRONOS_SETTINGS = ("allow_shell", "shutdown_grace")


def engine_settings(settings: EngineSettings | None, knobs: Mapping[str, Any],
                    *, called: str = "Chronos()") -> EngineSettings:
    """``settings`` (default: the engines' defaults) with ``knobs`` over it, validated; an unknown
    name is a ``TypeError`` naming the closest known one."""
    known = EngineSettings.model_fields
    for name in knobs:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{called} got an unexpected keyword argument {name!r}{hint}")
    if settings is None:
        return EngineSettings(**knobs)
    if not knobs:
        return settings
    return EngineSettings(**{**{n: getattr(settings, n) for n in known}, **knobs})


@dataclass
class Engines:
    scheduler: Scheduler | None
    worker: Worker | None
    notifier: Notifier | None


def _knobs(settings: EngineSettings, table: Mapping[str, str]) -> dict[str, Any]:
    return {param: getattr(settings, name) for param, name in table.items()}


def _owner(settings: EngineSettings) -> str | None:
    return f"{settings.worker_name}-{new_id()[-8:]}" if settings.worker_name else None


def build_engines(settings: EngineSettings, *, store: Store, queue: DispatchQueue, bus: EventBus,
                  clock: Clock, executors: Mapping[str, Executor], job_types: JobTypes,
                  channels: Mapping[str, NotifyChannel], refuse: Callable[[Job], str | None],
                  scheduler: bool, worker: bool, notifier: bool) -> Engines:
    """The engines this process runs, every parameter from ``settings`` (or a collaborator)."""
    max_queued = settings.max_queued
    if max_queued == "auto":
        # an in-process queue is bounded (the scheduler waits while it is full): runs beyond what the
        # worker keeps up with stay due in the store rather than pile up in memory, starting ever later
        max_queued = None if queue.durable else max(1000, 8 * settings.concurrency)
    notify = tuple(settings.notify_default)
    return Engines(
        scheduler=Scheduler(store, queue, bus, clock, **_knobs(settings, SCHEDULER_KNOBS),
                            limits=Limits(**_knobs(settings, PLANNER_KNOBS)), max_queued=max_queued,
                            redispatch_after=settings.redispatch_after or None,  # 0: never
                            default_notify=notify, refuse=refuse) if scheduler else None,
        worker=Worker(store, queue, bus, clock, executors, job_types=job_types,
                      **_knobs(settings, WORKER_KNOBS), owner=_owner(settings),
                      default_notify=notify) if worker else None,
        notifier=Notifier(store, queue, bus, clock, channels, **_knobs(settings, NOTIFIER_KNOBS),
                          owner=_owner(settings), default_notify=notify) if notifier else None,
    )


def load_plugins(chronos: Any, plugins: Iterable[str]) -> Any:
    """Import each plugin module and call its ``register(chronos)`` (e.g. to add a job type)."""
    for name in plugins:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise RuntimeError(f"CHRONOS_PLUGINS: cannot import {name!r}: {exc}") from exc
        register = getattr(module, "register", None)
        if not callable(register):
            raise RuntimeError(f"CHRONOS_PLUGINS: {name!r} has no register(chronos) function")
        register(chronos)
    return chronos
