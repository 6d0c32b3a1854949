"""``python`` jobs through the REST API: refused unless their module is in CHRONOS_PYTHON_MODULES (the
service allows none by default: a python job runs code as the service), and run when it is."""

from __future__ import annotations

import asyncio

from tests.api.conftest import build_app, running


def _job(function: str, **payload: object) -> dict[str, object]:
    return {"name": f"py-{function}", "type": "python", "payload": {"function": function, **payload}}


async def test_python_jobs_are_refused_by_default() -> None:
    async with running(build_app()) as c:
        for function in ("os:system", "tests.executors.pyjobs:greet", "subprocess:run"):
            r = await c.post("/jobs", json=_job(function, args=["id"]))
            assert r.status_code == 422, r.text
            [error] = r.json()["errors"]
            assert error["pointer"] == "/payload/function" and "CHRONOS_PYTHON_MODULES" in error["reason"]
        assert (await c.get("/jobs")).json()["items"] == []


async def test_an_allowed_module_runs_and_others_stay_refused() -> None:
    async with running(build_app(python_modules="tests.executors.pyjobs")) as c:
        assert (await c.post("/jobs", json=_job("os:system", args=["id"]))).status_code == 422
        assert (await c.post("/jobs", json=_job("tests.executors:pyjobs"))).status_code == 422  # not a prefix
        r = await c.post("/jobs", json=_job("tests.executors.pyjobs:greet", kwargs={"name": "api"}))
        assert r.status_code == 201, r.text
        run = (await c.post(f"/jobs/{r.json()['id']}/run")).json()
        async with asyncio.timeout(30):
            while True:
                got = (await c.get(f"/runs/{run['id']}")).json()
                if got["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.05)
        listed = (await c.get(f"/jobs/{r.json()['id']}/history")).json()["items"]
    assert [run["result"] for run in listed] == ["hello api"]
    assert got["status"] == "succeeded", got
    assert got["output"] == "hello api" and got["result"] == "hello api"
