"""docker-compose.yml is checked here, since no Docker engine runs on our machines: every chronos service's
command is a real CLI command with valid options, every variable it sets is one the settings read, the
values line up with the other services (database, broker, SMTP), and the health checks point at things
that exist."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from chronos_app.api.routes import OPS
from chronos_app.cli import check_bind, main
from chronos_app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CHRONOS_SERVICES = {"migrate", "api", "scheduler", "worker"}
SEED_NAMES = {"DB_HOST", "DB_USER", "DB_PASSWORD", "DB_NAME", "KAFKA_BROKER", "SMTP_HOST", "SMTP_PORT",
              "SMTP_USER", "SMTP_PASS"}
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: object, given: dict[str, str] | None = None) -> str:
    """Compose's ``${NAME:-default}`` / ``${NAME:?error}`` with an empty shell (plus ``given``)."""
    given = given or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(1) in given:
            return given[m.group(1)]
        if m.group(2) == "?":
            raise KeyError(m.group(1))  # required: compose refuses to start without it
        return m.group(3) or ""

    return _VAR.sub(sub, str(value))


def known_env_names() -> set[str]:
    return Settings.env_names()


def service_env(service: dict[str, Any], given: dict[str, str] | None = None) -> dict[str, str]:
    return {k: interpolate(v, given) for k, v in (service.get("environment") or {}).items()}


def test_the_stack_has_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"mysql", "kafka", "mailpit", *CHRONOS_SERVICES}
    assert services["mysql"]["image"].startswith("mysql:8")
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    for name in CHRONOS_SERVICES:
        assert services[name]["build"] == "." and services[name]["image"] == "chronos:local"
    assert services["migrate"]["restart"] == "no"  # a one-shot
    assert services["scheduler"]["deploy"]["replicas"] >= 2 and services["worker"]["deploy"]["replicas"] >= 2


@pytest.mark.parametrize("name", sorted(CHRONOS_SERVICES))
def test_each_chronos_command_is_a_cli_command_with_valid_options(compose: dict[str, Any], name: str) -> None:
    command = compose["services"][name]["command"]
    assert command[0] == "chronos"
    assert isinstance(main, click.Group)
    sub = main.commands.get(command[1])
    assert sub is not None, f"{name}: no 'chronos {command[1]}' command"
    ctx = sub.make_context(command[1], list(command[2:]))  # raises on an unknown option or a bad value
    if name == "api":
        assert ctx.params == {"host": "0.0.0.0", "port": 8080}


@pytest.mark.parametrize("name", sorted(CHRONOS_SERVICES))
def test_every_variable_is_read_by_the_settings(compose: dict[str, Any], name: str) -> None:
    env = compose["services"][name]["environment"]
    unknown = {k for k in env if k.upper() not in known_env_names()}
    assert not unknown, f"{name} sets variables chronos does not read: {sorted(unknown)}"
    assert SEED_NAMES <= set(env)  # the seed's names work


@pytest.mark.parametrize("name", sorted(CHRONOS_SERVICES))
def test_the_settings_a_service_gets_point_at_the_other_services(
        compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    for k in list(os.environ):
        if k.startswith("CHRONOS_") or k in SEED_NAMES or k in ("DB_PORT",):
            monkeypatch.delenv(k)
    env = service_env(services[name], {"CHRONOS_API_TOKENS": "t0k3n"})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    mysql = service_env(services["mysql"])
    assert settings.database_url == (f"mysql+pymysql://{mysql['MYSQL_USER']}:{mysql['MYSQL_PASSWORD']}"
                                     f"@mysql:3306/{mysql['MYSQL_DATABASE']}")
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{settings.kafka_bootstrap}" in advertised.split(",")
    assert settings.bus_backend == "kafka" and settings.kafka_idempotence is True  # real Kafka
    assert settings.smtp_host == "mailpit" and settings.smtp_port == 1025 and settings.smtp_password
    if name == "api":
        check_bind("0.0.0.0", settings)  # would refuse an unauthenticated public API
    if name == "worker":
        assert settings.concurrency == 64


def test_the_api_needs_its_tokens_from_the_shell(compose: dict[str, Any]) -> None:
    with pytest.raises(KeyError, match="CHRONOS_API_TOKENS"):
        service_env(compose["services"]["api"])


def test_start_order_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {"mysql": {"condition": "service_healthy"}}
    for name in ("api", "scheduler", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}
        assert deps["kafka"] == {"condition": "service_healthy"}
        assert services[name]["healthcheck"]["test"]
    for name in ("mysql", "kafka"):
        assert services[name]["healthcheck"]["test"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    path = re.search(r"127\.0\.0\.1:8080(/[\w/]+)", api_check)
    assert path is not None
    assert any(op.path == path.group(1) and op.method == "GET" and op.public for op in OPS)
    for name in ("scheduler", "worker"):
        test = services[name]["healthcheck"]["test"]
        assert test[-2] == "/app/docker/healthcheck.py" and test[-1] == name
    assert (ROOT / "docker" / "healthcheck.py").is_file()


def test_the_dockerfile_installs_what_the_services_need() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for package in ("chronos_core", "chronos_adapters", "chronos_app"):
        assert f"COPY {package}" in text
    assert "'.[mysql,kafka]'" in text  # the MySQL driver and aiokafka
    assert "COPY docker/healthcheck.py ./docker/healthcheck.py" in text and "WORKDIR /app" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)  # jobs do not run as root


def test_the_headless_health_check_sees_the_process_and_its_backends() -> None:
    import importlib.util
    import socket
    import subprocess
    import sys
    import time

    spec = importlib.util.spec_from_file_location("chronos_healthcheck", ROOT / "docker" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    hc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hc)

    assert hc.backends({"DB_HOST": "mysql", "KAFKA_BROKER": "k1:9092,k2"}) == \
        [("mysql", 3306), ("k1", 9092), ("k2", 9092)]
    assert hc.backends({"CHRONOS_DATABASE_URL": "mysql+pymysql://u:p@db:3307/x", "DB_HOST": "ignored",
                        "CHRONOS_KAFKA_BOOTSTRAP": "b:19092"}) == [("db", 3307), ("b", 19092)]
    assert hc.backends({"CHRONOS_DATABASE_URL": "sqlite:///x.db"}) == []

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert hc.reachable("127.0.0.1", port)
    listener.close()
    assert not hc.reachable("127.0.0.1", port, timeout=1)

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "chronos", "scheduler-x"])
    try:
        deadline = time.monotonic() + 30  # the child's command line appears once it has exec'd
        while not hc.running("scheduler-x") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hc.running("scheduler-x")  # a "chronos <role>" command line is found
        assert not hc.running("scheduler-y")
    finally:
        proc.kill()
        proc.wait()
    assert hc.main(["healthcheck.py", "bogus"]) == 2
