"""The dependency-injector container of the service (``chronos serve|api|scheduler|worker``): one provider
per part, each built by the composition root (``chronos_app.compose``) from ``settings``.

Nothing is opened here: the providers only construct objects; ``Chronos.start()`` (run by the Starlette
lifespan or the CLI) opens them and ``Chronos.stop()`` closes them. Tests swap adapters with
``container.store.override(providers.Object(MemoryStore()))`` or override ``settings`` as a whole.
"""

from __future__ import annotations

from dependency_injector import containers, providers

from chronos_core import SystemClock

from . import compose
from .compose import build_executor_config, build_executors, build_job_types, load_plugins
from .runtime import Chronos
from .settings import Settings

__all__ = ["Container", "build_executor_config", "build_executors", "build_job_types", "load_plugins"]


class Container(containers.DeclarativeContainer):
    """``settings`` → adapters → ``chronos``. Flags ``scheduler``/``worker`` say which engines run here
    (``chronos api`` runs neither, ``chronos serve`` both)."""

    settings = providers.Singleton(Settings)
    run_scheduler = providers.Object(True)
    run_worker = providers.Object(True)

    clock = providers.Singleton(SystemClock)
    job_types = providers.Singleton(compose.build_job_types, settings)
    store = providers.Singleton(compose.build_store, settings)
    # the outbox's relay runs where the scheduler runs; other processes only write to the outbox
    queue = providers.Singleton(compose.build_queue, settings, run_relay=run_scheduler)
    bus = providers.Singleton(compose.build_bus, settings)
    executor_config = providers.Singleton(compose.build_executor_config, settings)
    executors = providers.Singleton(compose.build_executors, executor_config)
    notify_channels = providers.Singleton(compose.build_notify_channels, executor_config)

    engines = providers.Singleton(
        Chronos,
        store=store,
        queue=queue,
        bus=bus,
        executors=executors,
        clock=clock,
        job_types=job_types,
        notify_channels=notify_channels,
        scheduler=run_scheduler,
        worker=run_worker,
        settings=settings,  # every engine knob, allow_shell and the shutdown grace
    )
    chronos = providers.Singleton(compose.load_plugins, engines, settings.provided.plugins)
