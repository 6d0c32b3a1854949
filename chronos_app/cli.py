"""The ``chronos`` command: ``serve`` (API + scheduler + worker in one process), ``api``, ``scheduler``,
``worker`` (one role each, for a deployment with a shared store and bus) and ``migrate``; the client commands
(``jobs``, ``runs``, ``logs``, ``preview``) live in ``cli_client`` and are only registered here."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from .cli_client import CLIENT_COMMANDS, connection_options

if TYPE_CHECKING:  # imported where used: the client commands start without loading the engines
    from .container import Container
    from .settings import Settings

__all__ = ["main"]

log = logging.getLogger("chronos")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: Settings) -> None:
    """Refuse to expose an unauthenticated API beyond this machine."""
    if not _is_loopback(host) and not settings.auth_enabled:
        raise click.UsageError(
            f"refusing to listen on {host} without API tokens: set CHRONOS_API_TOKENS (comma-separated), "
            "or bind to 127.0.0.1")


def _container(settings: Settings, *, scheduler: bool, worker: bool) -> Container:
    from dependency_injector import providers

    from .container import Container

    container = Container()
    container.settings.override(providers.Object(settings))
    container.run_scheduler.override(providers.Object(scheduler))
    container.run_worker.override(providers.Object(worker))
    return container


def _settings() -> Settings:
    from pydantic import ValidationError

    from .settings import Settings

    try:
        return Settings()
    except ValidationError as exc:  # say which setting is wrong and why, never its value (a secret?)
        why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                        for e in exc.errors(include_url=False, include_input=False))
        raise click.UsageError(f"invalid configuration: {why}") from None
    except ValueError as exc:  # pydantic-settings' parse errors name the variable, not its value
        raise click.UsageError(f"invalid configuration: {exc}") from None


# what ends or rewrites a line of the log: C0 controls but tab, DEL, NEL and the Unicode separators
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0a, 0x20), 0x7f, 0x85)} | {
    0x0a: "\\n", 0x0d: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class OneLineFormatter(logging.Formatter):
    """Each record's message on one line, its control characters escaped: messages carry text from jobs
    (a SQL error quoting a table named ``x\n2026-... INFO chronos.api: admin logged in`` forged a log
    line). A traceback still follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_UNPRINTABLE)
        return super().formatMessage(record)


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        fmt = handler.formatter
        handler.setFormatter(OneLineFormatter(fmt._fmt if fmt else None, fmt.datefmt if fmt else None))
    # the schema migration's own INFO lines ("Context impl SQLiteImpl", "Will assume ...") are noise here
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    for problem in type(settings).unknown_env(os.environ):  # a misspelt name is not silently dropped
        log.warning("%s", problem)


def _jobs_file(container: Container, source: str) -> None:
    """Read FILE (``${VAR}`` from the environment) and check it now, so that ``serve --jobs`` stops with a
    readable message before it listens; the jobs are applied once Chronos has started."""
    from chronos_core import InvalidJob

    from .jobfile import JobFileError, read_jobs

    try:
        specs, _ = read_jobs(source, expand=True)
    except JobFileError as exc:
        raise click.BadParameter(str(exc), param_hint="'--jobs'") from None
    chronos = container.chronos()
    for i, spec in enumerate(specs):
        try:
            chronos.jobs.validate(spec)
        except InvalidJob as exc:
            name = spec.get("name", "?")
            raise click.BadParameter(f"{source}: job #{i + 1} ({name!r}): {exc}", param_hint="'--jobs'") \
                from None
    chronos.declare(specs)
    log.info("%s: %d job(s) to apply at start", source, len(specs))


def _serve_http(host: str, port: int, *, scheduler: bool, worker: bool, jobs: str | None = None) -> None:
    import uvicorn

    from .api import create_app
    from .serving import install_log_filters, uvicorn_config
    from .tuning import tune_process

    settings = _settings()
    check_bind(host, settings)
    _logging(settings)
    if not (scheduler and worker) and settings.bus_backend == "memory":
        log.warning("the API runs without a scheduler and a worker on the in-process bus: runs it queues "
                    "reach no worker; set CHRONOS_KAFKA_BOOTSTRAP, or use 'chronos serve'")
    container = _container(settings, scheduler=scheduler, worker=worker)
    chronos = container.chronos()
    chronos.wait_for_backends = True  # a database or broker still starting is waited for
    if jobs:
        _jobs_file(container, jobs)
    on_started = tune_process if settings.process_tuning else None
    if scheduler and worker and settings.api_thread:
        from .front import can_thread

        why = can_thread(chronos)
        if why is None:
            sock = listen_socket(host, port)  # the port first, as below
            install_log_filters()
            asyncio.run(_serve_threaded(container, sock, host, port, on_started))
            return
        log.info("the API shares the engines' event loop (CHRONOS_API_THREAD): %s", why)
    app = create_app(container, on_started=on_started)
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown: stop accepting, close the SSE streams, then
    # the lifespan stops Chronos (no more claims; running attempts get shutdown_grace, then are cancelled).
    # uvicorn re-raises the signal once it has shut down; exiting with status 0 then says "stopped cleanly".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    install_log_filters()
    server = uvicorn.Server(uvicorn_config(app, host, port, settings))
    chronos.stopping = lambda: server.should_exit  # SIGTERM while waiting for a backend: give up
    # the port first: a second `chronos serve` must stop here, before its engines start beside the first
    server.run(sockets=[listen_socket(host, port)])


async def _serve_threaded(container: Container, sock: socket.socket, host: str, port: int,
                          on_started: Callable[[], None] | None) -> None:
    """``chronos serve`` with the API on a thread and event loop of its own (``serving.ApiThread``) and
    the engines on this one (the main thread's, which also takes SIGTERM/SIGINT). Start: the engines
    (waiting for a backend still starting, as ``Chronos.start`` does), then the API over a
    ``ChronosFront`` of them. Stop (a signal, or the API ending on its own): the API first (no new
    requests; those in flight may still call into the engines, whose loop keeps running), then the
    engines. A second signal cuts the API's wait for requests in flight short."""
    from .serving import ApiThread, api_on_thread, uvicorn_config

    settings = container.settings()
    chronos = container.chronos()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signalled: list[int] = []
    api: ApiThread | None = None

    def on_signal(sig: int) -> None:
        if signalled and api is not None:
            api.stop(force=True)
        signalled.append(sig)
        stop.set()

    def api_ended() -> None:  # on the API's thread
        with contextlib.suppress(RuntimeError):  # this loop closed already
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    chronos.stopping = stop.is_set  # a signal while waiting for a backend: give up
    try:
        try:
            await chronos.start()
        except Exception:
            log.exception("start-up failed")
            raise SystemExit(3) from None
        if not chronos.started:
            return
        try:
            async with api_on_thread(container, sock, lambda app: uvicorn_config(app, host, port, settings),
                                     on_started=on_started, on_exit=api_ended) as api:
                await stop.wait()
            if not signalled:
                why = "its start-up failed" if not api.started else (
                    f"{type(api.error).__name__}: {api.error}" if api.error is not None else "it returned")
                log.error("the API stopped on its own (%s); stopping the engines", why)
        finally:
            log.info("stopping: no more claims; running attempts get %ss", chronos.shutdown_grace)
            await chronos.stop(settings.shutdown_grace)
        if not signalled:
            raise SystemExit(1 if api is not None and api.started else 3)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a usage error that says why not (the port is taken...).

    Its protocol is TCP by number, as getaddrinfo gives it: asyncio turns Nagle's algorithm off
    (TCP_NODELAY) only on sockets whose ``proto`` says TCP, and a response written in two parts (uvicorn
    writes the head, then the body) otherwise waits for the client's delayed ACK, ~40 ms a request."""
    try:
        family, kind, proto, _, _ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError as exc:
        taken = " (is another chronos, or another program, using it? choose another with --port)" \
            if exc.errno == errno.EADDRINUSE else ""
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}{taken}") from None
    sock.set_inheritable(True)
    return sock


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@click.group()
@click.version_option(package_name="chronos-scheduler", prog_name="chronos")
@connection_options
def main() -> None:
    """Chronos: a job scheduler and runner. Configure it with CHRONOS_* environment variables.

    serve/api/scheduler/worker/migrate run Chronos; jobs/runs/logs/preview talk to a running one."""


for _command in CLIENT_COMMANDS:
    main.add_command(_command)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--jobs", "jobs_file", metavar="FILE", help="apply the jobs in FILE at start (as 'chronos "
              "apply -f FILE': YAML, JSON or TOML, ${VAR} from the environment; other jobs are kept)")
def serve(host: str, port: int, jobs_file: str | None) -> None:
    """API, scheduler and worker in one process (default store: SQLite file ./chronos.db)."""
    _serve_http(host, port, scheduler=True, worker=True, jobs=jobs_file)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
def api(host: str, port: int) -> None:
    """The REST API only (scheduling and execution happen in other processes)."""
    _serve_http(host, port, scheduler=False, worker=False)


async def _run_until_signal(container: Container) -> None:
    chronos = container.chronos()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    chronos.wait_for_backends = True  # a database or broker still starting is waited for
    chronos.stopping = stop.is_set
    await chronos.start()
    if not chronos.started:  # stopped while waiting for a backend
        return
    if container.settings().process_tuning:
        from .tuning import tune_process

        tune_process()
    log.info("chronos running (scheduler: %s, worker: %s)", chronos.scheduler is not None,
             chronos.worker is not None)
    try:
        await stop.wait()
    finally:
        log.info("stopping: no more claims; running attempts get %ss", chronos.shutdown_grace)
        await chronos.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def _headless(*, scheduler: bool, worker: bool) -> None:
    settings = _settings()
    _logging(settings)
    if settings.bus_backend == "memory":
        log.warning("with the in-process bus this process works alone; set CHRONOS_KAFKA_BOOTSTRAP to "
                    "share work with other chronos processes")
    asyncio.run(_run_until_signal(_container(settings, scheduler=scheduler, worker=worker)))


@main.command()
def scheduler() -> None:
    """The scheduler only: fires due slots into the dispatch queue."""
    _headless(scheduler=True, worker=False)


@main.command()
def worker() -> None:
    """A worker only: executes dispatched runs."""
    _headless(scheduler=False, worker=True)


@main.command()
def migrate() -> None:
    """Create or upgrade the SQL schema of CHRONOS_DATABASE_URL."""
    settings = _settings()
    _logging(settings)
    if settings.store_backend != "sql":
        raise click.UsageError("CHRONOS_DATABASE_URL is 'memory': nothing to migrate")
    from chronos_adapters.sql import migrate as run_migrations

    assert settings.database_url
    run_migrations(settings.database_url)
    click.echo("schema is up to date")


if __name__ == "__main__":  # pragma: no cover
    main()
