"""Settings from the environment: CHRONOS_* names, the seed system's names, derived choices."""

from __future__ import annotations

import asyncio
import json

import pytest

from chronos_adapters.executors import ExecutorConfig
from chronos_app.container import Container, build_executor_config
from chronos_app.settings import DEFAULT_DATABASE_URL, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("CHRONOS_", "DB_", "SMTP_", "KAFKA_")):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_service() -> None:
    s = Settings()
    assert s.database_url == DEFAULT_DATABASE_URL and s.store_backend == "sql"
    assert s.bus_backend == "memory" and not s.allow_shell and not s.auth_enabled


def test_seed_names_build_a_mysql_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db")
    monkeypatch.setenv("DB_USER", "chronos")
    monkeypatch.setenv("DB_PASSWORD", "p@ss:word")
    monkeypatch.setenv("DB_NAME", "jobs")
    monkeypatch.setenv("KAFKA_BROKER", "kafka:9092")
    monkeypatch.setenv("SMTP_HOST", "mail")
    monkeypatch.setenv("SMTP_PORT", "2525")
    monkeypatch.setenv("SMTP_USER", "u")
    monkeypatch.setenv("SMTP_PASS", "smtp-secret")
    s = Settings()
    assert s.database_url == "mysql+pymysql://chronos:p%40ss%3Aword@db:3306/jobs"
    assert s.kafka_bootstrap == "kafka:9092" and s.bus_backend == "kafka"
    config = build_executor_config(s)
    assert (config.smtp_host, config.smtp_port, config.smtp_user, config.smtp_password) == (
        "mail", 2525, "u", "smtp-secret")
    assert "smtp-secret" not in repr(s) and "p@ss" not in repr(s)
    monkeypatch.setenv("CHRONOS_DB_DRIVER", "asyncmy")  # the compiled asyncio driver instead
    assert Settings().database_url == "mysql+asyncmy://chronos:p%40ss%3Aword@db:3306/jobs"
    monkeypatch.setenv("CHRONOS_DB_DRIVER", "mysqldb")
    with pytest.raises(ValueError, match="db_driver"):
        Settings()


def test_chronos_names_win_and_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db")
    monkeypatch.setenv("CHRONOS_DATABASE_URL", "memory")
    monkeypatch.setenv("SMTP_HOST", "seed-mail")
    monkeypatch.setenv("CHRONOS_SMTP_HOST", "mail")
    monkeypatch.setenv("CHRONOS_API_TOKENS", "a, b,,c")
    monkeypatch.setenv("CHRONOS_ALLOW_SHELL", "true")
    monkeypatch.setenv("CHRONOS_HTTP_ALLOW_HOSTS", "127.0.0.1,10.0.0.0/8")
    monkeypatch.setenv("CHRONOS_SQL_CONNECTIONS", '{"reports": "sqlite:///r.db"}')
    s = Settings()
    assert s.database_url == "memory" and s.store_backend == "memory"
    assert s.smtp_host == "mail" and s.api_tokens == ["a", "b", "c"] and s.auth_enabled
    config = build_executor_config(s)
    assert config.allow_shell and config.http_allow_hosts == ("127.0.0.1", "10.0.0.0/8")
    assert dict(config.sql_connections) == {"reports": "sqlite:///r.db"}


def test_unset_executor_settings_keep_the_executor_defaults() -> None:
    config = build_executor_config(Settings())
    default = ExecutorConfig()
    assert (config.smtp_host, config.smtp_port, config.smtp_starttls) == (
        default.smtp_host, default.smtp_port, default.smtp_starttls)
    assert config.allow_shell is False  # the service refuses shell unless told otherwise


def test_container_selects_adapters_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from chronos_adapters.memory import MemoryEventBus, MemoryStore
    from chronos_adapters.sql import SqlStore

    monkeypatch.setenv("CHRONOS_DATABASE_URL", "memory")
    c = Container()
    assert isinstance(c.store(), MemoryStore) and isinstance(c.bus(), MemoryEventBus)
    assert c.chronos().store is c.store()
    monkeypatch.setenv("CHRONOS_DATABASE_URL", "sqlite:///x.db")
    assert isinstance(Container().store(), SqlStore)
    monkeypatch.setenv("CHRONOS_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    from chronos_adapters.kafka import KafkaDispatchQueue, KafkaEventBus
    from chronos_adapters.kafka.outbox import OutboxDispatchQueue

    k = Container()  # a SQL store with Kafka: dispatches go through the outbox
    assert isinstance(k.queue(), OutboxDispatchQueue) and isinstance(k.bus(), KafkaEventBus)
    assert isinstance(k.queue().queue, KafkaDispatchQueue)


@pytest.mark.parametrize(("host", "tokens", "allowed"), [
    ("127.0.0.1", "", True), ("localhost", "", True), ("::1", "", True), ("127.0.0.2", "", True),
    ("0.0.0.0", "", False), ("::", "", False), ("192.168.1.10", "", False), ("example.com", "", False),
    ("0.0.0.0", "tok", True),
])
def test_bind_guard(host: str, tokens: str, allowed: bool) -> None:
    import click

    from chronos_app.cli import check_bind

    settings = Settings(api_tokens=tokens)
    if allowed:
        check_bind(host, settings)
    else:
        with pytest.raises(click.UsageError, match="CHRONOS_API_TOKENS"):
            check_bind(host, settings)


def test_worker_name_and_redispatch_after_reach_the_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    from dependency_injector import providers

    monkeypatch.setenv("CHRONOS_DATABASE_URL", "memory")
    monkeypatch.setenv("CHRONOS_WORKER_NAME", "w-eu1")
    monkeypatch.setenv("CHRONOS_REDISPATCH_AFTER", "0")
    container = Container()
    container.settings.override(providers.Object(Settings()))
    chronos = container.chronos()
    assert chronos.worker is not None and chronos.worker.owner.startswith("w-eu1-")
    assert len(chronos.worker.owner) > len("w-eu1-")  # a suffix: two workers of one name stay apart
    assert chronos.scheduler is not None and chronos.scheduler.redispatch_after is None  # 0: never
    monkeypatch.setenv("CHRONOS_WORKER_NAME", "bad name")
    with pytest.raises(ValueError, match="worker_name"):
        Settings()


def test_retention_reaping_and_store_retries_reach_the_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention by age could not be turned on in the service: the knobs reached neither Chronos nor
    the settings."""
    from datetime import timedelta

    from dependency_injector import providers

    monkeypatch.setenv("CHRONOS_DATABASE_URL", "memory")
    monkeypatch.setenv("CHRONOS_HISTORY_MAX_AGE", "86400")
    monkeypatch.setenv("CHRONOS_PRUNE_INTERVAL", "30")
    monkeypatch.setenv("CHRONOS_REAP_GRACE", "20")
    monkeypatch.setenv("CHRONOS_STORE_RETRY_FOR", "600")
    container = Container()
    container.settings.override(providers.Object(Settings()))
    chronos = container.chronos()
    assert chronos.scheduler is not None and chronos.worker is not None
    assert chronos.scheduler.history_max_age == timedelta(days=1)
    assert chronos.scheduler.prune_interval == timedelta(seconds=30)
    assert chronos.scheduler.reap_grace == timedelta(seconds=20)
    assert chronos.worker.store_retry_for == 600
    assert Settings(history_max_age=None).history_max_age is None  # the default: kept
    monkeypatch.setenv("CHRONOS_HISTORY_MAX_AGE", "0")
    with pytest.raises(ValueError, match="history_max_age"):
        Settings()


async def test_history_max_runs_keeps_that_many_runs_per_job_of_the_service(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from dependency_injector import providers

    from chronos_core import FakeClock

    monkeypatch.setenv("CHRONOS_HISTORY_MAX_RUNS", "2")
    monkeypatch.setenv("CHRONOS_DATABASE_URL", "memory")
    monkeypatch.setenv("CHRONOS_ALLOW_SHELL", "true")
    container = Container()
    container.settings.override(providers.Object(Settings()))
    container.clock.override(providers.Object(FakeClock(datetime(2030, 1, 1, tzinfo=UTC))))
    chronos = container.chronos()
    assert chronos.scheduler is not None and chronos.scheduler.history_max_runs == 2
    async with chronos:
        job = await chronos.jobs.create({"name": "often", "type": "shell", "payload": {"command": "true"}})
        for _ in range(4):
            await chronos.jobs.trigger(job.id)
            await chronos.advance(1)
        assert chronos.scheduler is not None
        await chronos.scheduler.prune(chronos.clock.now())
        assert len(await chronos.jobs.history(job.id)) == 2
    assert Settings(history_max_runs=None).history_max_runs is None  # the default: no limit
    monkeypatch.setenv("CHRONOS_HISTORY_MAX_RUNS", "0")
    with pytest.raises(ValueError, match="history_max_runs"):
        Settings()


async def test_history_max_age_prunes_old_runs_of_an_embedded_chronos() -> None:
    from datetime import UTC, datetime

    from chronos_app import Chronos
    from chronos_core import FakeClock

    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    async with Chronos.embedded(clock=clock, history_max_age=3600, prune_interval=60) as chronos:
        job = await chronos.jobs.create({"name": "once", "type": "shell", "payload": {"command": "true"}})
        await chronos.jobs.trigger(job.id)
        await chronos.settle()
        assert len(await chronos.jobs.history(job.id)) == 1
        await chronos.advance(minutes=30)
        assert len(await chronos.jobs.history(job.id)) == 1  # younger than an hour: kept
        await chronos.advance(hours=1, minutes=5)
        history = await chronos.jobs.history(job.id)
        for _ in range(200):  # the sweep runs in the scheduler's loop, once it wakes at the new time
            if not history:
                break
            await asyncio.sleep(0.01)
            history = await chronos.jobs.history(job.id)
        assert history == []


def test_the_database_url_and_its_password_stay_out_of_the_settings_repr(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHRONOS_DATABASE_URL", "mysql+pymysql://chronos:s3cret-pw@db:3306/jobs")
    s = Settings()
    assert s.database_url is not None and "s3cret-pw" in s.database_url
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s)


def test_a_default_notification_past_a_jobs_bounds_is_a_configuration_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CHRONOS_NOTIFY_DEFAULT is held to the header bounds a job's own rules are held to: refused at
    start-up, naming the rule, instead of failing at every delivery."""
    hook = {"url": "https://ops.example/hook", "headers": {"X-Long": "v" * 9000}}
    monkeypatch.setenv("CHRONOS_NOTIFY_DEFAULT", f'[{{"on": ["failed"], "webhook": {json.dumps(hook)}}}]')
    with pytest.raises(ValueError, match=r"notify\.0\.webhook\.headers: header 'X-Long' is 6 characters "
                                         r"with a value of 9000"):
        Settings()
    hook["headers"] = {"X-Long": "v" * 8192}
    monkeypatch.setenv("CHRONOS_NOTIFY_DEFAULT", f'[{{"on": ["failed"], "webhook": {json.dumps(hook)}}}]')
    assert Settings().notify_default[0].webhook is not None
