"""What an operator looks at every day, through the real app: runs across jobs, job summaries, and the
output of a running run (stored, so any API instance shows it; followed as plain text like kubectl)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from tests.api.conftest import build_app, live, running, sse_events, wait_for

PROBLEM = "application/problem+json"
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "skipped", "missed"}


def shell(name: str, command: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "shell", "payload": {"command": command}, **fields}


async def finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        run = (await client.get(f"/runs/{run_id}")).json()
        return run if run["status"] in TERMINAL else None
    result: dict[str, Any] = await wait_for(done)
    return result


async def trigger(client: httpx.AsyncClient, job_id: str) -> str:
    r = await client.post(f"/jobs/{job_id}/run")
    assert r.status_code == 202, r.text
    run_id: str = r.json()["id"]
    return run_id


def problem(r: httpx.Response, slug: str, pointer: str | None = None) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["type"].endswith("/" + slug), body
    if pointer is not None:
        assert [e["pointer"] for e in body["errors"]] == [pointer], body
    return body


# ------------------------------------------------------------------------------------------ GET /runs


async def test_runs_across_jobs_with_filters_and_pages(client: httpx.AsyncClient) -> None:
    a = (await client.post("/jobs", json=shell("a", "true"))).json()
    b = (await client.post("/jobs", json=shell("b", "exit 3"))).json()
    ids = []
    for job in (a, b, a):
        ids.append(await trigger(client, job["id"]))
        await finished(client, ids[-1])
    newest = list(reversed(ids))

    async def listed(**params: Any) -> list[str]:
        r = await client.get("/runs", params=params)
        assert r.status_code == 200, r.text
        return [run["id"] for run in r.json()["items"]]

    assert await listed() == newest
    assert await listed(job_id=a["id"]) == [ids[2], ids[0]]
    assert await listed(status="failed") == [ids[1]]
    assert await listed(status="failed,succeeded") == newest
    assert await listed(status="succeeded", job_id=b["id"]) == []
    assert await listed(trigger="manual") == newest
    assert await listed(trigger="schedule,retry") == []
    run0 = (await client.get(f"/runs/{ids[0]}")).json()
    assert await listed(since=run0["scheduled_for"]) == newest
    assert await listed(until=run0["scheduled_for"]) == [ids[0]]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert await listed(since=future) == []
    page = (await client.get("/runs", params={"limit": 2})).json()
    assert [r["id"] for r in page["items"]] == newest[:2] and page["next_cursor"] == newest[1]
    rest = (await client.get("/runs", params={"limit": 2, "before": page["next_cursor"]})).json()
    assert [r["id"] for r in rest["items"]] == newest[2:] and rest["next_cursor"] is None


async def test_bad_run_filters_are_invalid_parameters_not_invalid_jobs(client: httpx.AsyncClient) -> None:
    problem(await client.get("/runs", params={"status": "failed,nope"}), "invalid-parameters", "/status")
    problem(await client.get("/runs", params={"trigger": "cron"}), "invalid-parameters", "/trigger")
    problem(await client.get("/runs", params={"before": "zzz"}), "invalid-parameters", "/before")
    problem(await client.get("/runs", params={"job_id": "x"}), "invalid-parameters", "/job_id")
    problem(await client.get("/runs", params={"since": "yesterday"}), "invalid-parameters", "/since")
    problem(await client.get("/runs", params={"until": "2027-01-01T00:00:00"}), "invalid-parameters",
            "/until")  # no offset: which zone?
    for number in ("0.0", "0", "1700000000"):  # pydantic alone takes these as Unix seconds
        problem(await client.get("/runs", params={"until": number}), "invalid-parameters", "/until")
        problem(await client.get("/runs", params={"since": number}), "invalid-parameters", "/since")
    problem(await client.get("/jobs", params={"after": "garbage"}), "invalid-parameters", "/after")
    job = (await client.post("/jobs", json=shell("a", "true"))).json()
    problem(await client.get(f"/jobs/{job['id']}/history", params={"before": "zzz"}), "invalid-parameters",
            "/before")
    problem(await client.get(f"/jobs/{job['id']}/history", params={"status": "bad"}), "invalid-parameters",
            "/status")
    problem(await client.get("/jobs", params={"last_status": "bad"}), "invalid-parameters", "/last_status")


# ------------------------------------------------------------------------------------- job summaries


async def test_each_job_carries_a_summary_of_its_runs(client: httpx.AsyncClient) -> None:
    bad = (await client.post("/jobs", json=shell("bad", "exit 3"))).json()
    good = (await client.post("/jobs", json=shell("good", "true", schedule="0 9 * * *",
                                                  timezone="Europe/Berlin"))).json()
    assert bad["last_run"] is None and bad["consecutive_failures"] == 0 and bad["next_runs"] == []
    assert bad["last_success_at"] is None and bad["last_failure_at"] is None
    times = [datetime.fromisoformat(t) for t in good["next_runs"]]
    assert len(times) == 3 and times[0] == datetime.fromisoformat(good["next_run_at"])
    local = [t.astimezone(ZoneInfo("Europe/Berlin")) for t in times]
    assert [(t.hour, t.minute) for t in local] == [(9, 0)] * 3
    assert [(b.date() - a.date()).days for a, b in itertools.pairwise(local)] == [1, 1]
    for _ in range(2):
        last = await finished(client, await trigger(client, bad["id"]))
    ok = await finished(client, await trigger(client, good["id"]))

    got = (await client.get(f"/jobs/{bad['id']}")).json()
    assert got["last_run"]["id"] == last["id"] and got["last_run"]["status"] == "failed"
    assert got["last_run"]["scheduled_for"] == last["scheduled_for"]
    assert got["last_run"]["finished_at"] == last["finished_at"]
    started, ended = (datetime.fromisoformat(last[k]) for k in ("started_at", "finished_at"))
    assert abs(got["last_run"]["duration"] - (ended - started).total_seconds()) < 1e-3
    assert got["consecutive_failures"] == 2 and got["last_failure_at"] == last["finished_at"]
    assert got["last_success_at"] is None
    listed = {j["name"]: j for j in (await client.get("/jobs")).json()["items"]}
    assert listed["bad"] == got
    assert listed["good"]["last_success_at"] == ok["finished_at"]
    assert listed["good"]["consecutive_failures"] == 0
    failing = (await client.get("/jobs", params={"last_status": "failed,timed_out"})).json()["items"]
    assert [j["name"] for j in failing] == ["bad"]
    # a success resets the count
    await client.put(f"/jobs/{bad['id']}", json=shell("bad", "true"))
    await finished(client, await trigger(client, bad["id"]))
    got = (await client.get(f"/jobs/{bad['id']}")).json()
    assert got["consecutive_failures"] == 0 and got["last_run"]["status"] == "succeeded"
    assert (await client.get("/jobs", params={"last_status": "failed"})).json()["items"] == []


async def test_name_is_a_prefix_and_documented_as_one(client: httpx.AsyncClient) -> None:
    for name in ("backup", "backup-db", "Backup-x", "report"):
        assert (await client.post("/jobs", json=shell(name, "true"))).status_code == 201

    async def names(**params: str) -> list[str]:
        return sorted(j["name"] for j in (await client.get("/jobs", params=params)).json()["items"])

    assert await names(name="backup") == ["backup", "backup-db"]
    assert await names(name="backup-") == ["backup-db"]
    doc = (await client.get("/openapi.json")).json()
    [param] = [p for p in doc["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "name"]
    assert "prefix" in param["description"]


# -------------------------------------------------------------------------------- output so far


GATED = "echo one; echo two; echo three; while [ ! -e {gate} ]; do sleep 0.05; done; echo four; echo five"


async def test_a_running_runs_output_so_far_is_seen_from_another_api_instance(tmp_path: Path) -> None:
    """Two processes' worth of app on one SQLite file: the one that runs the job and an API-only one
    (its own in-process bus: it sees nothing of the worker's events, only the store)."""
    url = f"sqlite:///{tmp_path}/chronos.db"
    gate = tmp_path / "gate"
    async with running(build_app(database_url=url)) as worker_side, \
            running(build_app(database_url=url, worker=False, scheduler=False)) as other:
        job = (await worker_side.post("/jobs", json=shell("gated", GATED.format(gate=gate)))).json()
        run_id = await trigger(worker_side, job["id"])

        async def three_lines() -> dict[str, Any] | None:
            run = (await other.get(f"/runs/{run_id}")).json()
            return run if run["output"] == "one\ntwo\nthree" else None
        run = await wait_for(three_lines)
        assert run["status"] == "running"
        log = await other.get(f"/runs/{run_id}/log")
        assert log.status_code == 200 and log.headers["content-type"].startswith("text/plain")
        assert log.text == "one\ntwo\nthree\n"
        gate.touch()
        await finished(worker_side, run_id)
        assert (await other.get(f"/runs/{run_id}/log")).text == "one\ntwo\nthree\nfour\nfive\n"


async def test_log_follow_streams_the_tail_then_new_lines_until_the_end(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with live(build_app()) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        job = (await client.post("/jobs", json=shell("gated", GATED.format(gate=gate)))).json()
        run_id = await trigger(client, job["id"])
        await wait_for(lambda: _has_output(client, run_id, "one\ntwo\nthree"))
        async with client.stream("GET", f"/runs/{run_id}/log", params={"follow": "true"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            lines = r.aiter_lines()
            assert [await anext(lines) for _ in range(3)] == ["one", "two", "three"]
            gate.touch()
            rest = [line async for line in lines]  # ends when the run ends
        assert rest == ["four", "five"]
        assert (await client.get(f"/runs/{run_id}")).json()["status"] == "succeeded"
        # a finished run's log, followed or not, is its output
        r = await client.get(f"/runs/{run_id}/log", params={"follow": "true"})
        assert r.text == "one\ntwo\nthree\nfour\nfive\n"
        missing = await client.get("/runs/01890000-0000-7000-8000-000000000000/log")
        assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM


async def _has_output(client: httpx.AsyncClient, run_id: str, output: str) -> bool:
    return bool((await client.get(f"/runs/{run_id}")).json()["output"] == output)


async def test_the_run_stream_starts_with_the_output_so_far(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with live(build_app()) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        job = (await client.post("/jobs", json=shell("gated", GATED.format(gate=gate)))).json()
        run_id = await trigger(client, job["id"])
        await wait_for(lambda: _has_output(client, run_id, "one\ntwo\nthree"))
        async with client.stream("GET", f"/monitor/runs/{run_id}") as r:
            events = sse_events(r)
            first = await anext(events)
            assert first["event"] == "run.started" and first["data"]["data"]["output"] == "one\ntwo\nthree"
            gate.touch()
            rest = [e async for e in events]
        lines = [e["data"]["data"]["line"] for e in rest if e["event"] == "run.log"]
        assert lines == ["four", "five"]  # not one, two, three again
        assert rest[-1]["event"] == "run.succeeded"


# --------------------------------------------------------------------------------------- GET /stats


async def test_stats_count_jobs_runs_now_and_outcomes(client: httpx.AsyncClient) -> None:
    bad = (await client.post("/jobs", json=shell("bad", "exit 1"))).json()
    good = (await client.post("/jobs", json=shell("good", "true"))).json()
    paused = (await client.post("/jobs", json=shell("idle", "true", status="paused"))).json()
    for job in (bad, bad, good):
        await finished(client, await trigger(client, job["id"]))
    r = await client.get("/stats")
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["jobs"] == {"active": 2, "paused": 1, "total": 3}
    assert stats["runs"] == {"queued": 0, "running": 0}
    for window in ("last_hour", "last_day"):
        w = stats[window]
        assert w["total"] == 3 and w["by_status"]["failed"] == 2 and w["by_status"]["succeeded"] == 1
        assert set(w["by_status"]) == {"succeeded", "failed", "timed_out", "cancelled", "skipped", "missed"}
        assert w["busiest"][0] == {"job_id": bad["id"], "name": "bad", "runs": 2,
                                   "consecutive_failures": None}
        assert w["failing"] == [{"job_id": bad["id"], "name": "bad", "runs": 2, "consecutive_failures": 2}]
    assert paused["status"] == "paused"
    # a deleted job's runs still count, without a name
    await client.delete(f"/jobs/{bad['id']}")
    w = (await client.get("/stats")).json()["last_hour"]
    assert w["failing"] == [{"job_id": bad["id"], "name": None, "runs": 2, "consecutive_failures": None}]


async def test_the_run_stream_reads_lines_printed_before_it_subscribed_but_not_yet_stored(
        tmp_path: Path) -> None:
    """The worker stores the output so far about once a second and publishes each line as it comes: lines
    published before a stream subscribed, which the store did not have yet, must come from the store
    (they are in neither the snapshot nor the live events). The store's output writes are held back
    while those lines are printed, so the gap is there every time."""
    from chronos_adapters.memory import MemoryStore
    from tests.engine.proxies import Proxy

    store = Proxy(MemoryStore())
    gate_a, gate_b = tmp_path / "a", tmp_path / "b"
    command = (f"echo one; echo two; while [ ! -e {gate_a} ]; do sleep 0.05; done; echo three; echo four; "
               f"while [ ! -e {gate_b} ]; do sleep 0.05; done; echo five")
    held = False

    async def record_output(real: Any, *args: Any, **kwargs: Any) -> Any:
        return None if held else await real(*args, **kwargs)
    store.hooks["record_output"] = record_output

    async with live(build_app(store=store)) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        job = (await client.post("/jobs", json=shell("gapped", command))).json()
        run_id = await trigger(client, job["id"])
        await wait_for(lambda: _has_output(client, run_id, "one\ntwo"))
        held = True
        # a job stream sees the lines published while the store is held back
        async with client.stream("GET", f"/monitor/logs/{job['id']}", params={"types": "run.log"}) as js:
            seen = sse_events(js)
            gate_a.touch()
            assert [(await anext(seen))["data"]["data"]["line"] for _ in range(2)] == ["three", "four"]
        run = (await client.get(f"/runs/{run_id}")).json()
        assert (run["output"], run["output_lines"]) == ("one\ntwo", 2)  # the store is behind
        async with client.stream("GET", f"/monitor/runs/{run_id}") as r:
            events = sse_events(r)
            first = await anext(events)
            assert first["data"]["data"]["output"] == "one\ntwo"
            held = False
            gate_b.touch()
            rest = [e async for e in events]
        logs = [e["data"]["data"] for e in rest if e["event"] == "run.log"]
        assert [(d["line"], d["seq"]) for d in logs] == [("three", 3), ("four", 4), ("five", 5)]
        assert [d.get("replayed", False) for d in logs] == [True, True, False]
        assert rest[-1]["event"] == "run.succeeded"


async def test_a_quiet_run_stream_still_gets_a_line_that_was_stored_after_it_subscribed(
        tmp_path: Path) -> None:
    """As above, but no later line comes to reveal the gap (``echo started; sleep 300``): the quiet stream
    reads the store on its own and sends the line while the run still runs."""
    from chronos_adapters.memory import MemoryStore
    from tests.engine.proxies import Proxy

    store = Proxy(MemoryStore())
    gate = tmp_path / "gate"
    held = True

    async def record_output(real: Any, *args: Any, **kwargs: Any) -> Any:
        return None if held else await real(*args, **kwargs)
    store.hooks["record_output"] = record_output

    async with live(build_app(store=store)) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        job = (await client.post("/jobs", json=shell(
            "quiet", f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo done"))).json()
        async with client.stream("GET", f"/monitor/logs/{job['id']}", params={"types": "run.log"}) as js:
            seen = sse_events(js)
            run_id = await trigger(client, job["id"])
            assert (await anext(seen))["data"]["data"]["line"] == "started"
        assert (await client.get(f"/runs/{run_id}")).json()["output_lines"] == 0  # not stored yet
        async with client.stream("GET", f"/monitor/runs/{run_id}") as r:
            events = sse_events(r)
            assert (await anext(events))["event"] == "run.started"
            held = False
            async with asyncio.timeout(15):  # the worker stores within ~1 s, the stream looks every 2 s
                line = await anext(events)
            assert line["event"] == "run.log" and line["data"]["data"]["line"] == "started"
            assert line["data"]["data"]["seq"] == 1 and line["data"]["data"]["replayed"] is True
            assert (await client.get(f"/runs/{run_id}")).json()["status"] == "running"
            gate.touch()
            rest = [e async for e in events]
        assert [e["data"]["data"]["line"] for e in rest if e["event"] == "run.log"] == ["done"]
        assert rest[-1]["event"] == "run.succeeded"
