"""CHRONOS_PLUGINS: how the service processes (api, scheduler, worker) get a user's own job types."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers

from chronos_app.container import Container
from chronos_app.settings import Settings
from chronos_core import InvalidJob, RunStatus

PLUGIN = '''
from typing import ClassVar
from chronos_core import ExecutionResult, Executor, Payload

class GreetPayload(Payload):
    who: str

class GreetExecutor(Executor):
    type_name: ClassVar[str] = "greet"

    async def execute(self, job, run, log):
        await log(f"hello {job.payload['who']}")
        return ExecutionResult(ok=True, exit_code=0)

def register(chronos):
    chronos.register_job_type("greet", GreetPayload, GreetExecutor())
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "chronos_test_greet_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "chronos_test_greet_plugin"
    sys.modules.pop("chronos_test_greet_plugin", None)


async def test_a_plugin_adds_a_job_type_that_validates_and_runs(plugin_module: str) -> None:
    container = Container()
    container.settings.override(providers.Object(Settings(database_url="memory", plugins=plugin_module)))
    chronos = container.chronos()
    assert "greet" in chronos.job_types.names
    async with chronos:
        with pytest.raises(InvalidJob) as exc:
            await chronos.jobs.create({"name": "bad", "type": "greet", "payload": {}})
        assert exc.value.errors[0].pointer == "/payload/who"
        job = await chronos.jobs.create({"name": "g", "type": "greet", "payload": {"who": "world"}})
        run = await chronos.jobs.trigger(job.id)
        for _ in range(200):
            done = await chronos.runs.get(run.id)
            if done.finished:
                break
            await asyncio.sleep(0.01)
    assert done.status is RunStatus.SUCCEEDED and done.output == "hello world"


def test_a_missing_plugin_fails_the_start_clearly() -> None:
    container = Container()
    container.settings.override(providers.Object(Settings(database_url="memory",
                                                         plugins="no_such_chronos_plugin")))
    with pytest.raises(RuntimeError, match="cannot import 'no_such_chronos_plugin'"):
        container.chronos()


def test_plugins_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHRONOS_PLUGINS", "a.b, c")
    assert Settings().plugins == ["a.b", "c"]
