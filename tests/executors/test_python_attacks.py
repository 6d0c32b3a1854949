"""The python job allow-list must name what runs, not only where the lookup starts: an allowed module's
imports (``json`` imports ``codecs``, which imports ``builtins``) and dunder attributes led to ``exec``.
The attacks run through the real engines, in a thread and in a child process, and try to write a file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from chronos_adapters.executors import ExecutorConfig
from chronos_app import Chronos
from chronos_core import InvalidJob, RunStatus

MOD = "tests.executors.pyjobs"  # imports os, logging, asyncio, threading, time


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


async def _run(chronos: Chronos, payload: dict) -> tuple[RunStatus, str]:  # type: ignore[type-arg]
    job = await chronos.jobs.create({"name": f"a-{len(str(payload))}-{id(payload)}", "type": "python",
                                     "payload": payload})
    await chronos.jobs.trigger(job.id)
    async with asyncio.timeout(60):
        while True:
            runs = await chronos.jobs.history(job.id)
            if runs and runs[0].finished:
                return runs[0].status, runs[0].error or ""
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("isolation", ["thread", "process"])
async def test_an_allowed_modules_imports_do_not_lead_out_of_the_allow_list(tmp_path: Path,
                                                                           isolation: str) -> None:
    marker = tmp_path / "pwned"
    config = ExecutorConfig(python_modules=("json", MOD))
    async with Chronos.embedded(executor_config=config) as chronos:
        for ref, args in (("json:codecs.builtins.exec", [_code(marker)]),   # module -> module -> exec
                          (f"{MOD}:os.system", [f"touch {marker}"]),          # a module it imported
                          (f"{MOD}:log.manager.disable", [0]),               # an object it holds
                          (f"{MOD}:asyncio.subprocess.create_subprocess_exec", ["touch", str(marker)])):
            status, error = await _run(chronos, {"function": ref, "args": args, "isolation": isolation})
            assert status is RunStatus.FAILED and "allow-list" in error, (ref, error)
        # what the allow-list means still runs
        status, _ = await _run(chronos, {"function": f"{MOD}:where", "isolation": isolation})
        assert status is RunStatus.SUCCEEDED
    assert not marker.exists()


async def test_private_and_dunder_names_are_refused_when_the_job_is_made() -> None:
    config = ExecutorConfig(python_modules=(MOD,))
    async with Chronos.embedded(executor_config=config) as chronos:
        for ref in (f"{MOD}:where.__globals__.get", f"{MOD}:RunContext.__subclasses__", f"{MOD}:_secret",
                    f"{MOD}:where.__call__"):
            with pytest.raises(InvalidJob) as info:
                await chronos.jobs.create({"name": "x", "type": "python", "payload": {"function": ref}})
            assert info.value.errors[0].loc == ("payload", "function") and "private" in \
                info.value.errors[0].reason, ref


async def test_a_function_the_program_hands_over_is_not_restricted() -> None:
    # the embedded library without an allow-list names its own functions: anything importable goes
    async with Chronos.embedded() as chronos:
        status, _ = await _run(chronos, {"function": "os.path:join", "args": ["a", "b"]})
    assert status is RunStatus.SUCCEEDED


@pytest.mark.parametrize("isolation", ["thread", "process"])
async def test_a_private_module_of_an_allowed_package_is_not_imported(
        tmp_path: Path, isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # importing runs code: pkg/__main__.py is the package's command line, run by the import alone
    marker = tmp_path / "imported"
    pkg = tmp_path / "srpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def ok():\n    return 1\n")
    (pkg / "__main__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    async with Chronos.embedded(executor_config=ExecutorConfig(python_modules=("srpkg",))) as chronos:
        with pytest.raises(InvalidJob) as info:
            await chronos.jobs.create({"name": "m", "type": "python",
                                       "payload": {"function": "srpkg.__main__:main"}})
        assert "private" in info.value.errors[0].reason
        # a job stored by a process without the allow-list is refused where it runs, before the import
        executor = chronos.executors["python"]
        executor.allowed_modules = None  # type: ignore[attr-defined]
        job = await chronos.jobs.create({"name": "m", "type": "python", "payload": {
            "function": "srpkg.__main__:main", "isolation": isolation}})
        executor.allowed_modules = ("srpkg",)  # type: ignore[attr-defined]
        await chronos.jobs.trigger(job.id)
        async with asyncio.timeout(60):
            while not (runs := await chronos.jobs.history(job.id)) or not runs[0].finished:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert runs[0].status is RunStatus.FAILED and "private" in (runs[0].error or "")
        status, _ = await _run(chronos, {"function": "srpkg:ok", "isolation": isolation})
        assert status is RunStatus.SUCCEEDED
    assert not marker.exists()


@pytest.mark.parametrize("isolation", ["thread", "process"])
async def test_a_token_the_function_returns_is_masked_in_its_result(isolation: str) -> None:
    # the result is shown with the run, which read-only tokens read: a function refreshing a token and
    # returning the answer showed the fresh token there
    answer = '{"access_token": "fresh-token-5e1c77aa", "token_type": "Bearer", "expires_in": 3600}'
    async with Chronos.embedded(executor_config=ExecutorConfig(python_modules=("json",))) as chronos:
        job = await chronos.jobs.create({"name": f"t-{isolation}", "type": "python", "payload": {
            "function": "json:loads", "args": [answer], "isolation": isolation}})
        await chronos.jobs.trigger(job.id)
        async with asyncio.timeout(60):
            while not (runs := await chronos.jobs.history(job.id)) or not runs[0].finished:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    assert runs[0].status is RunStatus.SUCCEEDED
    assert "fresh-token" not in runs[0].output + json.dumps(runs[0].result)
    assert runs[0].result == {"access_token": "***", "token_type": "Bearer", "expires_in": 3600}
