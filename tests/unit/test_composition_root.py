"""The composition root (``chronos_app.compose``): every engine parameter comes from a collaborator or a
setting, each setting reaches its engine by every route (``CHRONOS_*`` through the service's container,
``Chronos(...)``, ``Chronos.embedded(...)``), and every executor option is mapped from the settings.

A new engine parameter or executor option that is not wired fails here."""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterator
from typing import Any

import pytest

from chronos_adapters.executors import ExecutorConfig
from chronos_adapters.memory import MemoryDispatchQueue, MemoryEventBus, MemoryStore
from chronos_app import compose
from chronos_app.compose import (
    CHRONOS_SETTINGS,
    ENGINE_RULES,
    NOTIFIER_KNOBS,
    PLANNER_KNOBS,
    SCHEDULER_KNOBS,
    WORKER_KNOBS,
)
from chronos_app.container import Container
from chronos_app.runtime import Chronos
from chronos_app.settings import EngineSettings, Settings
from chronos_core import Scheduler, Worker
from chronos_core.notifier import Notifier
from chronos_core.planning import Limits

ENGINES: dict[str, tuple[type, dict[str, str], set[str]]] = {
    # engine: (class, parameter -> setting, its collaborators: objects, not settings)
    "Scheduler": (Scheduler, SCHEDULER_KNOBS, {"store", "queue", "bus", "clock"}),
    "Worker": (Worker, WORKER_KNOBS, {"store", "queue", "bus", "clock", "executors", "job_types"}),
    "Notifier": (Notifier, NOTIFIER_KNOBS, {"store", "queue", "bus", "clock", "channels"}),
}


def parameters(cls: type) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_parameter_is_a_collaborator_or_comes_from_a_setting(engine: str) -> None:
    cls, knobs, collaborators = ENGINES[engine]
    wired = set(knobs) | set(ENGINE_RULES[engine]) | collaborators
    assert sorted(set(parameters(cls)) - wired) == [], f"{engine}: parameters no setting reaches"
    assert sorted(wired - set(parameters(cls))) == [], f"{engine}: mapped names it does not take"


def test_every_planner_limit_comes_from_a_setting() -> None:
    assert sorted(f.name for f in dataclasses.fields(Limits)) == sorted(PLANNER_KNOBS)


def test_every_engine_setting_is_used_and_every_used_setting_exists() -> None:
    used = {*SCHEDULER_KNOBS.values(), *PLANNER_KNOBS.values(), *WORKER_KNOBS.values(),
            *NOTIFIER_KNOBS.values(), *CHRONOS_SETTINGS}
    used |= {s for rules in ENGINE_RULES.values() for names in rules.values() for s in names}
    assert sorted(used - set(EngineSettings.model_fields)) == []
    assert sorted(set(EngineSettings.model_fields) - used) == []
    assert set(EngineSettings.model_fields) <= set(Settings.model_fields)  # CHRONOS_<NAME> each


def test_the_settings_defaults_are_the_engines_own() -> None:
    for engine, (cls, knobs, _) in ENGINES.items():
        params = parameters(cls)
        for param, setting in knobs.items():
            assert EngineSettings.model_fields[setting].default == params[param].default, (engine, param)
    for f in dataclasses.fields(Limits):
        assert EngineSettings.model_fields[PLANNER_KNOBS[f.name]].default == f.default, f.name


def _other(value: Any) -> Any:
    """A valid value other than the default ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value + 1.5
    if value is None:  # history_max_age
        return 3600.0
    raise AssertionError(f"no other value for {value!r}")


PASSED = {**{s: _other(EngineSettings.model_fields[s].default)
             for s in {*SCHEDULER_KNOBS.values(), *PLANNER_KNOBS.values(), *WORKER_KNOBS.values(),
                       *NOTIFIER_KNOBS.values()}},
          # the settings used by a rule
          "max_queued": 77, "redispatch_after": 33.0, "worker_name": "w-eu1", "shutdown_grace": 2.5,
          "notify_default": [{"on": ["failed"], "webhook": {"url": "https://ops.example/hook"}}],
          "allow_shell": False}


def test_the_routes_below_pass_every_engine_setting() -> None:
    assert sorted(PASSED) == sorted(EngineSettings.model_fields)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, Any]]]:
    """The keyword arguments each engine was last built with (the real engines, recording them)."""
    seen: dict[str, dict[str, Any]] = {}
    for name, (cls, _, _) in ENGINES.items():
        def init(self: Any, *args: Any, _cls: type = cls, _name: str = name, **kwargs: Any) -> None:
            seen[_name] = kwargs
            _cls.__init__(self, *args, **kwargs)  # type: ignore[misc]

        monkeypatch.setattr(compose, name, type(f"Recording{name}", (cls,), {"__init__": init}))
    for name in list(os.environ):
        if name.startswith("CHRONOS_"):
            monkeypatch.delenv(name)
    yield seen


def _check(chronos: Chronos, seen: dict[str, dict[str, Any]]) -> None:
    assert set(seen) == set(ENGINES)
    for engine, (_, knobs, _) in ENGINES.items():
        for param, setting in knobs.items():
            assert seen[engine][param] == PASSED[setting], (engine, param)
        assert [r.model_dump() for r in seen[engine]["default_notify"]] == [
            r.model_dump() for r in EngineSettings(notify_default=PASSED["notify_default"]).notify_default]
    assert seen["Scheduler"]["limits"] == Limits(**{p: PASSED[s] for p, s in PLANNER_KNOBS.items()})
    assert seen["Scheduler"]["max_queued"] == 77 and seen["Scheduler"]["redispatch_after"] == 33.0
    assert seen["Scheduler"]["refuse"] is not None
    assert seen["Worker"]["owner"].startswith("w-eu1-") and seen["Notifier"]["owner"].startswith("w-eu1-")
    assert chronos.shutdown_grace == 2.5 and chronos.allow_shell is False


def test_every_engine_setting_reaches_its_engine_from_the_environment(
        built: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("CHRONOS_DATABASE_URL", "memory")
    for name, value in PASSED.items():
        monkeypatch.setenv(f"CHRONOS_{name.upper()}", json.dumps(value) if isinstance(value, list)
                           else str(value).lower() if isinstance(value, bool) else str(value))
    _check(Container().chronos(), built)


def test_every_engine_setting_reaches_its_engine_from_the_constructor(
        built: dict[str, dict[str, Any]]) -> None:
    _check(Chronos(store=MemoryStore(), queue=MemoryDispatchQueue(), bus=MemoryEventBus(), **PASSED), built)


def test_every_engine_setting_reaches_its_engine_from_embedded(built: dict[str, dict[str, Any]]) -> None:
    _check(Chronos.embedded(**PASSED), built)


def test_default_notify_is_still_a_keyword_of_chronos(built: dict[str, dict[str, Any]]) -> None:
    chronos = Chronos.embedded(default_notify=PASSED["notify_default"])
    assert len(chronos.default_notify) == 1 and len(built["Worker"]["default_notify"]) == 1


@pytest.mark.parametrize("call", ["embedded", "constructor"])
def test_a_misspelt_knob_is_a_type_error_naming_the_right_one(call: str) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'concurency'; did you mean "
                                        "'concurrency'"):
        if call == "embedded":
            Chronos.embedded(concurency=4)
        else:
            Chronos(store=MemoryStore(), queue=MemoryDispatchQueue(), bus=MemoryEventBus(), concurency=4)


def test_a_bad_knob_value_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Chronos.embedded(concurrency=0)


def test_max_queued_auto_bounds_only_the_in_process_queue() -> None:
    assert Chronos.embedded(concurrency=200).scheduler.max_queued == 1600  # type: ignore[union-attr]
    assert Chronos.embedded(max_queued=None).scheduler.max_queued is None  # type: ignore[union-attr]
    assert Settings(max_queued="none").max_queued is None and Settings(max_queued="9").max_queued == 9


# executors ---------------------------------------------------------------------------------------------
EXECUTOR_VALUES: dict[str, tuple[str, Any, Any]] = {
    # ExecutorConfig field: (Settings field, a value other than the default, as ExecutorConfig has it)
    "allow_shell": ("allow_shell", True, True),
    "shell_kill_grace": ("shell_kill_grace", 1.5, 1.5),
    "shell_max_line": ("shell_max_line", 4096, 4096),
    "shell_pass_env": ("shell_pass_env", "A,B", ("A", "B")),
    "http_allow_hosts": ("http_allow_hosts", "10.0.0.0/8", ("10.0.0.0/8",)),
    "http_timeout": ("http_timeout", 12.0, 12.0),
    "http_max_body": ("http_max_body", 99, 99),
    "http_max_redirects": ("http_max_redirects", 2, 2),
    "smtp_max_recipients": ("email_max_recipients", 5, 5),
    "smtp_host": ("smtp_host", "mail.example", "mail.example"),
    "smtp_port": ("smtp_port", 2525, 2525),
    "smtp_user": ("smtp_user", "u", "u"),
    "smtp_password": ("smtp_password", "a-long-smtp-password", "a-long-smtp-password"),
    "smtp_starttls": ("smtp_starttls", True, True),
    "smtp_ssl": ("smtp_ssl", False, False),
    "smtp_sender": ("smtp_sender", "a@example.com", "a@example.com"),
    "smtp_timeout": ("smtp_timeout", 3.0, 3.0),
    "smtp_ca_file": ("smtp_ca_file", "/etc/ca.pem", "/etc/ca.pem"),
    "sql_connections": ("sql_connections", {"r": "sqlite:///r.db"}, {"r": "sqlite:///r.db"}),
    "sql_max_rows": ("sql_max_rows", 10, 10),
    "sql_max_cell": ("sql_max_cell", 20, 20),
    "python_modules": ("python_modules", "myapp", ("myapp",)),
    "python_threads": ("python_threads", 3, 3),
    "python_kill_grace": ("python_kill_grace", 0.5, 0.5),
}


def test_every_executor_option_is_mapped_from_the_settings() -> None:
    fields = {f.name for f in dataclasses.fields(ExecutorConfig)}
    assert sorted(compose.executor_settings(Settings(database_url="memory"))) == sorted(fields)
    assert sorted(EXECUTOR_VALUES) == sorted(fields)
    config = compose.build_executor_config(
        Settings(database_url="memory", **{s: v for s, v, _ in EXECUTOR_VALUES.values()}))
    for name, (_, _, expected) in EXECUTOR_VALUES.items():
        assert getattr(config, name) == expected, name


def test_the_services_executor_defaults_are_the_executors_own_but_for_shell_and_python() -> None:
    config = compose.build_executor_config(Settings(database_url="memory"))
    assert config == dataclasses.replace(ExecutorConfig(), allow_shell=False, python_modules=())


def test_the_outbox_is_decided_once() -> None:
    kafka = {"kafka_bootstrap": "127.0.0.1:1"}
    assert Settings(database_url="sqlite:///x.db", **kafka).dispatch_outbox
    assert not Settings(database_url="sqlite:///x.db", kafka_outbox=False, **kafka).dispatch_outbox
    assert not Settings(database_url="memory", **kafka).dispatch_outbox  # no SQL store to write it in
    assert not Settings(database_url="sqlite:///x.db").dispatch_outbox  # no Kafka


def test_shell_off_replaces_any_shell_executor() -> None:
    from chronos_adapters.executors import ShellExecutor

    chronos = Chronos(store=MemoryStore(), queue=MemoryDispatchQueue(), bus=MemoryEventBus(),
                      executors=[ShellExecutor(allowed=True)], allow_shell=False)
    assert isinstance(chronos.executors["shell"], compose.RefusedExecutor)
    assert chronos.worker is not None and chronos.worker.executors["shell"] is chronos.executors["shell"]
    chronos.register_job_type("shell", chronos.job_types.model("shell"), ShellExecutor())
    assert isinstance(chronos.executors["shell"], compose.RefusedExecutor)
    on = Chronos(store=MemoryStore(), queue=MemoryDispatchQueue(), bus=MemoryEventBus(),
                 executors=[ShellExecutor()])
    assert isinstance(on.executors["shell"], ShellExecutor)
