"""Notifications wired for real: ``Chronos.embedded`` with the real clock and the REST service built by
the container from its settings (CHRONOS_NOTIFY_DEFAULT), each sending to a real local HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from chronos_adapters.executors import ExecutorConfig
from chronos_app import Chronos
from chronos_core import RunStatus
from chronos_core.hooks import NoticeStatus
from tests.api.conftest import build_app, running
from tests.fixtures.httpserver import LocalHttpServer


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):  # polling the store: there is no event to wait for
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds}s")


async def test_embedded_a_failed_run_is_told_and_a_hanging_endpoint_delays_nothing_else(
        http_server: LocalHttpServer) -> None:
    config = ExecutorConfig(http_allow_hosts=("127.0.0.1",))
    async with Chronos.embedded(executor_config=config) as chronos:
        slow = await chronos.jobs.create({
            "name": "slow-hook", "type": "shell", "payload": {"command": "true"},
            "notify": [{"on": ["succeeded"], "webhook": {"url": f"{http_server.url}/slow?s=20"}}]})
        job = await chronos.jobs.create({
            "name": "broken", "type": "shell", "payload": {"command": "exit 3"},
            "notify": [{"on": ["failed"], "webhook": {"url": f"{http_server.url}/hook",
                                                      "secret": "k3y-k3y-k3y"}}]})
        first = await chronos.jobs.trigger(slow.id)

        async def recorded() -> bool:
            return (await chronos.runs.get(first.id)).status is RunStatus.SUCCEEDED
        await _until(recorded)

        async def stuck_in_slow() -> bool:  # its notice is claimed and the request is at the server
            return bool(http_server.requests_to("/slow"))
        await _until(stuck_in_slow)
        # the notifier is now stuck in the slow endpoint: the next run is recorded all the same
        run = await chronos.jobs.trigger(job.id)

        async def failed() -> bool:
            return (await chronos.runs.get(run.id)).status is RunStatus.FAILED
        await _until(failed, 10)

        async def delivered() -> bool:
            return bool(http_server.requests_to("/hook"))
        await _until(delivered)
        # ...while the slow endpoint still holds its own message (it answers after 20 s)
        assert http_server.requests_to("/slow")
        (stuck,) = await chronos.runs.notices(first.id)
        assert stuck.status is NoticeStatus.PENDING and stuck.attempts == 0
    (req,) = http_server.requests_to("/hook")
    want = "sha256=" + hmac.new(b"k3y-k3y-k3y", req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-chronos-signature"] == want
    assert json.loads(req.body)["run"]["id"] == run.id


async def test_the_service_default_list_from_settings_notifies_and_shows_the_attempts(
        http_server: LocalHttpServer, tmp_path: Path) -> None:
    app = build_app(database_url=f"sqlite:///{tmp_path}/c.db", http_allow_hosts=["127.0.0.1"],
                    notify_default=[{"on": ["failed"], "webhook": {"url": f"{http_server.url}/ops"}}])
    async with running(app) as api:
        job = (await api.post("/jobs", json={"name": "j", "type": "shell",
                                             "payload": {"command": "exit 1"}})).json()
        run = (await api.post(f"/jobs/{job['id']}/run")).json()

        async def delivered() -> bool:
            items = (await api.get(f"/runs/{run['id']}/notifications")).json()["items"]
            return bool(items) and items[0]["status"] == NoticeStatus.DELIVERED.value
        await _until(delivered)
        (n,) = (await api.get(f"/runs/{run['id']}/notifications")).json()["items"]
    assert n["channel"] == "webhook" and n["event"] == "failed" and n["attempts"] == 1
    assert n["tries"][0]["code"] == 200
    (req,) = http_server.requests_to("/ops")
    assert json.loads(req.body)["job"]["name"] == "j"
