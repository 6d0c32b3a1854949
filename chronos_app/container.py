"""The dependency-injector container: picks adapters from the settings and builds one ``Chronos``.

Nothing is opened here: the providers only construct objects; ``Chronos.start()`` (run by the Starlette
lifespan or the CLI) opens them and ``Chronos.stop()`` closes them. Tests swap adapters with
``container.store.override(providers.Object(MemoryStore()))`` or override ``settings`` as a whole.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from chronos_core import Executor, JobTypes, Store, SystemClock
from chronos_core.secrets import MIN_SECRET_LENGTH

from .runtime import Chronos
from .settings import Settings

if TYPE_CHECKING:
    from chronos_adapters.executors import ExecutorConfig
    from chronos_core.ports import NotifyChannel

__all__ = ["Container", "build_executor_config", "build_executors", "build_job_types"]

log = logging.getLogger("chronos")


def _memory_store() -> Store:
    from chronos_adapters.memory import MemoryStore

    return MemoryStore()


def _sql_store(settings: Settings) -> Store:
    from chronos_adapters.sql import SqlStore  # imported lazily: only SQL deployments need SQLAlchemy

    assert settings.database_url
    on_dispatch = None
    if settings.bus_backend == "kafka" and settings.kafka_outbox:
        from chronos_adapters.kafka.outbox import write_outbox  # runs and messages in one transaction

        on_dispatch = write_outbox
    return SqlStore(settings.database_url, pool_size=settings.db_pool_size,
                    output_limit=settings.output_limit, on_dispatch=on_dispatch)


def _memory_queue() -> Any:
    from chronos_adapters.memory import MemoryDispatchQueue

    return MemoryDispatchQueue()


def _memory_bus() -> Any:
    from chronos_adapters.memory import MemoryEventBus

    return MemoryEventBus()


def _kafka_queue(settings: Settings, run_relay: bool = True) -> Any:
    assert settings.kafka_bootstrap, "CHRONOS_BUS=kafka needs CHRONOS_KAFKA_BOOTSTRAP"
    queue = _kafka_runs(settings)
    if settings.kafka_outbox and settings.store_backend == "sql" and settings.database_url:
        from chronos_adapters.kafka.outbox import OutboxDispatchQueue, OutboxRelay

        # the relay runs where the scheduler runs; other processes only write to the outbox
        return OutboxDispatchQueue(queue, OutboxRelay(settings.database_url, queue), run_relay=run_relay)
    return queue


def _kafka_runs(settings: Settings) -> Any:
    from chronos_adapters.kafka import KafkaDispatchQueue  # needs the kafka extra (aiokafka)

    assert settings.kafka_bootstrap
    return KafkaDispatchQueue(settings.kafka_bootstrap, topic=settings.kafka_runs_topic,
                              group=settings.kafka_group, partitions=settings.kafka_runs_partitions,
                              max_tries=settings.kafka_max_tries,
                              enable_idempotence=settings.kafka_idempotence,
                              replication_factor=settings.kafka_replication_factor)


def _kafka_bus(settings: Settings) -> Any:
    from chronos_adapters.kafka import KafkaEventBus

    assert settings.kafka_bootstrap, "CHRONOS_BUS=kafka needs CHRONOS_KAFKA_BOOTSTRAP"
    return KafkaEventBus(settings.kafka_bootstrap, topic=settings.kafka_events_topic,
                         partitions=settings.kafka_events_partitions,
                         enable_idempotence=settings.kafka_idempotence,
                         replication_factor=settings.kafka_replication_factor)


def build_executor_config(settings: Settings) -> ExecutorConfig:
    """The executors' settings: every field ``ExecutorConfig`` has that the settings know about."""
    from chronos_adapters.executors import ExecutorConfig

    known = {f.name for f in dataclasses.fields(ExecutorConfig)}
    values: dict[str, Any] = {
        "allow_shell": settings.allow_shell,
        "shell_kill_grace": settings.shell_kill_grace,
        "shell_pass_env": tuple(settings.shell_pass_env) or None,
        "smtp_max_recipients": settings.email_max_recipients,
        "http_allow_hosts": tuple(settings.http_allow_hosts) or None,
        "smtp_host": settings.smtp_host,
        "smtp_port": settings.smtp_port,
        "smtp_user": settings.smtp_user,
        "smtp_password": settings.smtp_password,
        "smtp_starttls": settings.smtp_starttls,
        "smtp_ssl": settings.smtp_ssl,
        "smtp_sender": settings.smtp_sender,
        "sql_connections": dict(settings.sql_connections) or None,
        # the service's allow-list, even when empty (None would allow every module)
        "python_modules": tuple(settings.python_modules),
        "python_threads": settings.python_threads,
    }
    # None means "not configured": keep the executor's own default.
    return ExecutorConfig(**{k: v for k, v in values.items() if k in known and v is not None})


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


MIN_TOKEN_LENGTH = 16


def build_notify_channels(config: ExecutorConfig) -> list[NotifyChannel]:
    from chronos_adapters.notify import notify_channels

    return notify_channels(config)


def build_executors(config: ExecutorConfig) -> list[Executor]:
    from chronos_adapters.executors import builtin_executors

    return builtin_executors(config)


def load_plugins(chronos: Chronos, plugins: list[str]) -> Chronos:
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


class Container(containers.DeclarativeContainer):
    """``settings`` → adapters → ``chronos``. Flags ``scheduler``/``worker`` say which engines run here
    (``chronos api`` runs neither, ``chronos serve`` both)."""

    settings = providers.Singleton(Settings)
    run_scheduler = providers.Object(True)
    run_worker = providers.Object(True)

    clock = providers.Singleton(SystemClock)
    job_types = providers.Singleton(build_job_types, settings)

    store = providers.Selector(
        settings.provided.store_backend,
        memory=providers.Singleton(_memory_store),
        sql=providers.Singleton(_sql_store, settings),
    )
    queue = providers.Selector(
        settings.provided.bus_backend,
        memory=providers.Singleton(_memory_queue),
        kafka=providers.Singleton(_kafka_queue, settings, run_scheduler),
    )
    bus = providers.Selector(
        settings.provided.bus_backend,
        memory=providers.Singleton(_memory_bus),
        kafka=providers.Singleton(_kafka_bus, settings),
    )
    executor_config = providers.Singleton(build_executor_config, settings)
    executors = providers.Singleton(build_executors, executor_config)
    notify_channels = providers.Singleton(build_notify_channels, executor_config)

    engines = providers.Singleton(
        Chronos,
        store=store,
        queue=queue,
        bus=bus,
        executors=executors,
        clock=clock,
        job_types=job_types,
        allow_shell=settings.provided.allow_shell,
        scheduler=run_scheduler,
        worker=run_worker,
        concurrency=settings.provided.concurrency,
        lease=settings.provided.lease,
        output_limit=settings.provided.output_limit,
        shutdown_grace=settings.provided.shutdown_grace,
        redispatch_after=settings.provided.redispatch_after,
        notify_channels=notify_channels,
        default_notify=settings.provided.notify_default,
        worker_name=settings.provided.worker_name,
        history_max_age=settings.provided.history_max_age,
        prune_interval=settings.provided.prune_interval,
        reap_grace=settings.provided.reap_grace,
        store_retry_for=settings.provided.store_retry_for,
    )
    chronos = providers.Singleton(load_plugins, engines, settings.provided.plugins)
