"""SSE streams over a real socket (uvicorn in the test's loop): live run.log lines, Last-Event-ID resume,
the per-run and all-jobs streams, replay from history when the bus no longer has the client's position."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import build_app, job, live, running, sse_events
from tests.api.test_jobs import _problem


async def _collect(client: httpx.AsyncClient, url: str, until: str, headers: dict[str, str] | None = None,
                   **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(30), client.stream("GET", url, headers=headers, params=params) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for event in sse_events(r):
            out.append(event)
            if event.get("event") == until:
                break
    return out


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_live_log_line_then_resume_with_last_event_id(store: str, tmp_path: Path) -> None:
    app = build_app(sse_ping=1, database_url="memory" if store == "memory" else f"sqlite:///{tmp_path}/c.db")
    await _live_line_then_resume(app)


@pytest.mark.kafka
async def test_live_log_line_and_resume_over_kafka(tmp_path: Path, kafka_bootstrap: str,
                                                   kafka_names: Any) -> None:
    """The same through the Kafka event bus (its own event ids) and dispatch queue, on SQLite."""
    app = build_app(sse_ping=1, database_url=f"sqlite:///{tmp_path}/c.db", kafka_bootstrap=kafka_bootstrap,
                    kafka_runs_topic=kafka_names.topic("runs"), kafka_group=kafka_names.group(),
                    kafka_events_topic=kafka_names.topic("events"), kafka_runs_partitions=1)
    await _live_line_then_resume(app)


async def _live_line_then_resume(app: Any) -> None:
    async with live(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        created = (await c.post("/jobs", json=job(payload={"command": "echo first; sleep 0.3; echo second"})
                                )).json()
        url = f"/monitor/logs/{created['id']}"
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(30), c.stream("GET", url) as r:
            assert r.status_code == 200
            run = (await c.post(f"/jobs/{created['id']}/run")).json()
            async for event in sse_events(r):
                seen.append(event)
                if event.get("event") == "run.log":
                    break  # disconnect right after the first live line
        line = seen[-1]
        assert line["data"]["data"]["line"] == "first" and line["data"]["run_id"] == run["id"]
        assert line["id"] == line["data"]["id"]
        # The run goes on while we are away; resuming from the last id gets what we missed, in order.
        rest = await _collect(c, url, "run.succeeded", headers={"Last-Event-ID": line["id"]})
        kinds = [(e["event"], e["data"]["data"].get("line")) for e in rest]
        assert kinds[0] == ("run.log", "second"), kinds
        assert kinds[-1] == ("run.succeeded", None)
        assert ("run.log", "first") not in kinds
        assert line["id"] not in [e["id"] for e in rest]


async def test_run_stream_ends_with_the_final_status_and_token_in_query() -> None:
    app = build_app(api_tokens="s3", sse_ping=1)
    async with live(app) as base, httpx.AsyncClient(base_url=base, timeout=30,
                                                   headers={"Authorization": "Bearer s3"}) as c:
        created = (await c.post("/jobs", json=job(payload={"command": "echo a; echo b"}))).json()
        run = (await c.post(f"/jobs/{created['id']}/run")).json()
        async with httpx.AsyncClient(base_url=base, timeout=30) as browser:  # EventSource: no headers
            assert (await browser.get(f"/monitor/runs/{run['id']}")).status_code == 401
            events = await _collect(browser, f"/monitor/runs/{run['id']}", "run.succeeded", token="s3")
        assert events[-1]["event"] == "run.succeeded"
        assert all(e["data"]["run_id"] == run["id"] for e in events)
        # the run already finished: a new stream gives its final state (from history) and ends
        again = await _collect(c, f"/monitor/runs/{run['id']}", "run.succeeded")
        assert len(again) == 1 and again[0]["data"]["data"]["replayed"] is True
        assert "a\nb" in again[0]["data"]["data"]["output"]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_all_jobs_stream_with_type_filter_and_history_fallback(store: str, tmp_path: Path) -> None:
    app = build_app(sse_ping=1, database_url="memory" if store == "memory" else f"sqlite:///{tmp_path}/c.db")
    async with live(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        one = (await c.post("/jobs", json=job(name="one"))).json()
        two = (await c.post("/jobs", json=job(name="two"))).json()
        async with asyncio.timeout(30), c.stream("GET", "/monitor/logs",
                                                params={"types": "run.succeeded"}) as r:
            await c.post(f"/jobs/{one['id']}/run")
            await c.post(f"/jobs/{two['id']}/run")
            jobs = set()
            async for event in sse_events(r):
                assert event["event"] == "run.succeeded"
                jobs.add(event["data"]["job_id"])
                if len(jobs) == 2:
                    break
        assert jobs == {one["id"], two["id"]}
        # A position the bus does not know (e.g. from before a restart): the stream starts with the runs'
        # state from history, without ids, so the client keeps its position until a live event.
        async with asyncio.timeout(30), c.stream("GET", f"/monitor/logs/{one['id']}",
                                                headers={"Last-Event-ID": "999999"}) as r:
            first = await anext(sse_events(r))
        assert first["event"] == "run.succeeded" and first["data"]["data"]["replayed"] is True
        assert "id" not in first and first["data"]["job_id"] == one["id"]


async def test_stream_errors_are_problems() -> None:
    async with running(build_app()) as c:
        _problem(await c.get("/monitor/logs/nope"), 404)
        _problem(await c.get("/monitor/runs/nope"), 404)
        body = _problem(await c.get("/monitor/logs", params={"types": "run.nope"}), 422)
        assert body["errors"][0]["pointer"] == "/types"


async def test_idle_streams_get_keep_alive_pings() -> None:
    app = build_app(sse_ping=0.2)
    async with live(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        async with asyncio.timeout(30), c.stream("GET", "/monitor/logs") as r:
            async for line in r.aiter_lines():
                if line.startswith(":"):
                    assert "ping" in line
                    break
            # the open stream is counted
            assert "\nchronos_sse_clients 1.0\n" in (await c.get("/metrics")).text


async def test_job_stream_ends_when_the_job_is_deleted() -> None:
    async with live(build_app(sse_ping=1)) as base, httpx.AsyncClient(base_url=base, timeout=30) as c:
        created = (await c.post("/jobs", json=job())).json()
        events = []
        async with asyncio.timeout(30), c.stream("GET", f"/monitor/logs/{created['id']}") as r:
            await c.patch(f"/jobs/{created['id']}/status", json={"status": "paused"})
            await c.delete(f"/jobs/{created['id']}")
            async for event in sse_events(r):  # ends by itself
                events.append(event["event"])
        assert events == ["job.paused", "job.deleted"]
