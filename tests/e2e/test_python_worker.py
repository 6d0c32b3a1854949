"""``python`` jobs in the scaled-out service: ``chronos api`` / ``scheduler`` / ``worker`` processes on
MariaDB and the Tansu broker, the workers importing from their own ``sys.path``. The allow-list holds
on both sides: the API refuses a function outside CHRONOS_PYTHON_MODULES, and a worker refuses one that
another process stored (here: an embedded Chronos that allows every module) before importing anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chronos_app import Chronos
from tests.e2e.test_scale_out import Stack
from tests.fixtures.kafka import KafkaNames

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.mysql, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def python_stack(fresh_mysql_url: str, kafka_bootstrap: str, kafka_names: KafkaNames,
                 tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    s = Stack(fresh_mysql_url, kafka_bootstrap, kafka_names, tmp_path)
    s.env.update(CHRONOS_PYTHON_MODULES="tests.executors.pyjobs", PYTHONPATH=str(ROOT))
    try:
        yield s, fresh_mysql_url
    finally:
        s.stop()


def _finished(base: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        run: dict[str, Any] = httpx.get(f"{base}/runs/{run_id}", timeout=30).json()
        if run["status"] not in ("queued", "running"):
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.2)


async def _store_elsewhere(url: str, marker: Path) -> str:
    """A job stored by a process that allows every module (an embedded Chronos on the same database)."""
    async with Chronos.embedded(database_url=url, scheduler=False, worker=False) as other:
        evil = await other.jobs.create({"name": "stored-elsewhere", "type": "python",
                                        "retry": {"max_attempts": 3, "strategy": "immediate"},
                                        "payload": {"function": "os:system", "args": [f"touch {marker}"]}})
    return evil.id


def test_the_allow_list_holds_in_the_api_and_in_the_worker(python_stack: tuple[Stack, str],
                                                           tmp_path: Path) -> None:
    stack, url = python_stack
    api = stack.api()
    stack.spawn("scheduler")
    stack.spawn("worker")
    refused = httpx.post(f"{api}/jobs", json={"name": "evil", "type": "python", "payload": {
        "function": "os:system", "args": ["true"]}}, timeout=30)
    assert refused.status_code == 422 and "CHRONOS_PYTHON_MODULES" in refused.text
    job = httpx.post(f"{api}/jobs", json={"name": "greet", "type": "python", "payload": {
        "function": "tests.executors.pyjobs:greet", "kwargs": {"name": "worker"}}}, timeout=30).json()
    run = httpx.post(f"{api}/jobs/{job['id']}/run", timeout=30).json()
    done = _finished(api, run["id"])
    assert done["status"] == "succeeded", done
    assert (done["output"], done["result"]) == ("hello worker", "hello worker")  # kept on MariaDB
    # stored by a process that allows every module: the worker still refuses it, importing nothing
    marker = tmp_path / "pwned"
    evil = asyncio.run(_store_elsewhere(url, marker))
    run = httpx.post(f"{api}/jobs/{evil}/run", timeout=30).json()
    done = _finished(api, run["id"])
    assert done["status"] == "failed" and "allow-list" in (done["error"] or ""), done
    assert "not retried" in done["error"] and not marker.exists()
    assert len(httpx.get(f"{api}/jobs/{evil}/history", timeout=30).json()["items"]) == 1
