"""``builtin_executors``: one executor per built-in type, configured from ``ExecutorConfig``."""

from __future__ import annotations

import pytest

from chronos_adapters.executors import (
    EmailExecutor,
    ExecutorConfig,
    HttpExecutor,
    PythonExecutor,
    ShellExecutor,
    SqlExecutor,
    builtin_executors,
)
from chronos_core import JobTypes


def test_every_builtin_job_type_has_an_executor() -> None:
    executors = builtin_executors()
    names = sorted(e.type_name for e in executors)
    assert names == sorted(JobTypes().names) == ["email", "http", "python", "shell", "sql"]


def test_config_reaches_the_executors() -> None:
    config = ExecutorConfig(allow_shell=False, shell_kill_grace=1.5, http_allow_hosts=("10.0.0.0/8",),
                            http_max_body=10, smtp_host="mail.example", smtp_port=587, smtp_starttls=True,
                            smtp_user="u", smtp_password="p4ss", smtp_sender="a@example.com",
                            sql_connections={"main": "sqlite://"}, sql_max_rows=7)
    by_type = {e.type_name: e for e in builtin_executors(config)}
    shell, http, email, sql = by_type["shell"], by_type["http"], by_type["email"], by_type["sql"]
    assert isinstance(shell, ShellExecutor) and not shell.allowed and shell.kill_grace == 1.5
    assert isinstance(http, HttpExecutor) and http.max_body == 10
    assert [str(n) for n in http.guard.networks] == ["10.0.0.0/8"]
    assert isinstance(email, EmailExecutor)
    assert (email.host, email.port, email.starttls, email.user, email.password, email.sender) == (
        "mail.example", 587, True, "u", "p4ss", "a@example.com")
    assert isinstance(sql, SqlExecutor) and sql.connections == {"main": "sqlite://"} and sql.max_rows == 7


def test_defaults_are_usable_and_conflicts_refused() -> None:
    config = ExecutorConfig()
    assert config.allow_shell and config.http_allow_hosts == () and config.sql_connections == {}
    with pytest.raises(ValueError, match="exclude"):
        ExecutorConfig(smtp_ssl=True, smtp_starttls=True)


def test_the_service_allows_no_python_module_unless_configured() -> None:
    from chronos_app.container import build_executor_config
    from chronos_app.settings import Settings

    def python(settings: Settings) -> PythonExecutor:
        [ex] = [e for e in builtin_executors(build_executor_config(settings)) if e.type_name == "python"]
        assert isinstance(ex, PythonExecutor)
        return ex

    default = python(Settings(database_url="memory"))
    assert default.allowed_modules == () and not default.allowed("myapp.jobs:report")
    configured = python(Settings(database_url="memory", python_modules="myapp, other.jobs"))
    assert configured.allowed("myapp.jobs:report") and configured.allowed("other.jobs:x")
    assert not configured.allowed("os:system") and not configured.allowed("other:x")
    assert PythonExecutor().allowed("os:system")  # the embedded default: the program's own functions
