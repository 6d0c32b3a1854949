"""Notification rules are bounded in the core, so every store takes or refuses the same jobs
(review-secattack F2): on MySQL ``notify`` is a TEXT column (65,535 bytes) and 20 rules within their
fields' old bounds (webhook header values had none) were a DataError - a 500, and the INSERT's
parameters, the job's secrets, in the error log - for a job SQLite and memory stored."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from chronos_core.hookspec import HEADER_VALUE_MAX, NOTIFY_MAX_BYTES, WebhookChannel
from tests.api.conftest import build_app, running, wait_for

SECRET = "s3cret-env-value-7f41c2aa"
HOOK_SECRET = "Bearer hook-secret-19d3e8b2"
MERGE = {"Content-Type": "application/merge-patch+json"}


def rules(pad: int, count: int = 20) -> list[dict[str, Any]]:
    return [{"on": ["failed"], "webhook": {"url": "https://example.com/hook",
                                           "headers": {"Authorization": HOOK_SECRET, "X-Pad": "p" * pad}}}
            ] * count


def spec(name: str = "big-notify", **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "http", "schedule": "@every 1h",
            "payload": {"url": "https://example.com/x", "headers": {"Authorization": f"Bearer {SECRET}"}},
            **fields}


def pointers(r: httpx.Response) -> list[str]:
    return [e["pointer"] for e in r.json()["errors"]]


async def test_too_long_notification_rules_are_refused_on_every_route_and_store(
        client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    too_long = rules(3100)  # 20 rules of ~3.2 KB: over NOTIFY_MAX_BYTES, every value within its bound
    r = await client.post("/jobs", json=spec(notify=too_long))
    assert r.status_code == 422 and pointers(r) == ["/notify"], r.text
    assert str(NOTIFY_MAX_BYTES) in r.text
    fits = rules(2800)  # ~58 KB: stored by every store, MySQL included
    r = await client.post("/jobs", json=spec(notify=fits))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    got = await client.get(f"/jobs/{job_id}")
    assert got.status_code == 200 and len(got.json()["notify"]) == 20
    r = await client.put(f"/jobs/{job_id}", json=spec(notify=too_long))
    assert r.status_code == 422 and pointers(r) == ["/notify"], r.text
    r = await client.patch(f"/jobs/{job_id}", json={"notify": too_long}, headers=MERGE)
    assert r.status_code == 422 and pointers(r) == ["/notify"], r.text
    r = await client.post("/jobs/apply", json={"jobs": [spec("other", notify=too_long)]})
    assert r.status_code == 422 and pointers(r) == ["/jobs/0/notify"], r.text
    for s in (SECRET, HOOK_SECRET):
        assert s not in caplog.text


async def test_a_webhook_header_value_is_bounded(client: httpx.AsyncClient) -> None:
    r = await client.post("/jobs", json=spec(notify=rules(HEADER_VALUE_MAX + 1, count=1)))
    assert r.status_code == 422 and pointers(r) == ["/notify/0/webhook/headers"], r.text
    r = await client.post("/jobs", json=spec(notify=rules(HEADER_VALUE_MAX, count=1)))
    assert r.status_code == 201, r.text


async def test_a_job_stored_over_the_bounds_lists_runs_and_is_edited_down(tmp_path: Path) -> None:
    """review-secfix F3: the header and byte bounds are input rules. A row stored before them (a
    9,000-character header, 20 rules of ~6 KB = ~120 KB: both were taken on SQLite before secfix) is
    read, shown and run as it is; a write must bring it within them (PUT as shown: 422 at each place,
    saying what to send again), and a write that does is taken."""
    db = tmp_path / "chronos.db"
    long_header = '{"on":["paused"],"webhook":{"url":"https://example.com/hook","headers":{"X":"' + \
        "v" * 9000 + '"}}}'
    async with running(build_app(scheduler=False, worker=False, database_url=f"sqlite:///{db}")) as c:
        r = await c.post("/jobs", json={"name": "old", "type": "shell", "payload": {"command": "true"},
                                        "notify": [{"on": ["paused"], "webhook": {
                                            "url": "https://example.com/hook", "headers": {"X": "v"}}}]})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
    for stored, where in [("[" + long_header + "]", ["/notify/0/webhook/headers"]),
                          ("[" + ",".join([long_header.replace('"v' + "v" * 8999, '"' + "v" * 6000)] * 20)
                           + "]", ["/notify"])]:
        with sqlite3.connect(db) as conn:  # the row as the release before secfix could store it
            conn.execute("UPDATE jobs SET notify = ?", (stored,))
        async with running(build_app(scheduler=False, database_url=f"sqlite:///{db}")) as c:
            listing = await c.get("/jobs")
            assert listing.status_code == 200, listing.text[:300]
            shown = (await c.get(f"/jobs/{job_id}")).json()
            assert shown["notify"][0]["webhook"]["headers"] == {"X": "***"}
            run = (await c.post(f"/jobs/{job_id}/run")).json()

            async def succeeded(run_id: str = run["id"]) -> bool:
                return (await c.get(f"/runs/{run_id}")).json()["status"] == "succeeded"
            await wait_for(succeeded)
            body = {k: shown[k] for k in ("name", "type", "payload", "notify")}
            r = await c.put(f"/jobs/{job_id}", json=body)  # written back as shown: the stored values
            assert r.status_code == 422 and pointers(r) == where, r.text[:500]
            r = await c.patch(f"/jobs/{job_id}", json={"description": "unrelated"}, headers=MERGE)
            assert r.status_code == 422 and pointers(r) == where, r.text[:500]
            body["notify"] = [{"on": ["paused"], "webhook": {"url": "https://example.com/hook",
                                                              "headers": {"X": "short"}}}]
            r = await c.put(f"/jobs/{job_id}", json=body)  # edited down
            assert r.status_code == 200, r.text[:500]
        with sqlite3.connect(db) as conn:
            (size,) = conn.execute("SELECT length(CAST(notify AS BLOB)) FROM jobs").fetchone()
        assert size < 200


def test_a_notice_target_over_the_header_bound_still_decodes() -> None:
    """The notifier decodes a notice's webhook with WebhookChannel: no length bound there (F3)."""
    hook = WebhookChannel.model_validate({"url": "https://example.com/h", "headers": {"X": "v" * 9000}})
    assert len(hook.headers["X"]) == 9000
