"""Hostile review 'secreview' of branch secfix (/work/coord/review-secfix.md): its proofs of F1 and F3,
regression tests since secfix2 (each failed on secfix), and pins of what was attacked and found sound."""

from __future__ import annotations

import gc
import sqlite3
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from chronos_app.api.schemas import JobOut
from chronos_core import JobSummary, RunStatus
from chronos_core.hookspec import HEADER_VALUE_MAX, NOTIFY_MAX_BYTES, notify_json
from chronos_core.operations import Jobs
from tests.api.conftest import build_app, running

HOOK_SECRET = "Bearer hook-secret-19d3e8b2"


def _rules(headers: dict[str, str], count: int = 20) -> list[dict[str, Any]]:
    return [{"on": ["failed"], "webhook": {"url": "https://example.com/hook", "headers": dict(headers)}}
            for _ in range(count)]


def _spec(notify: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "grows", "type": "shell", "schedule": "@every 1h", "payload": {"command": "true"},
            "notify": notify}


# ------------------------------------------------------------------------------------------------ F1

async def test_notify_bound_holds_after_masked_values_are_restored(client: httpx.AsyncClient) -> None:
    """A write token stores 20 rules of ~2.9 KB (58 KB, within NOTIFY_MAX_BYTES), then PUTs them back as
    shown (every header value ``***``) with one new header of 2,800 characters each. The bound measures
    the masked rules (~58 KB) and passes; ``restore_notify`` then puts the old values back: ~115 KB
    stored on memory/SQLite (MySQL: DataError -> 422, so the stores differ again). Repeated, each PUT
    adds ~60 KB, up to 20 rules x 50 headers x 8 KiB = ~8 MB. (MySQL passes: its column refuses it.)"""
    r = await client.post("/jobs", json=_spec(_rules({"Authorization": HOOK_SECRET, "X-Pad": "p" * 2800})))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    shown = r.json()["notify"]
    assert all(set(rule["webhook"]["headers"].values()) == {"***"} for rule in shown)
    grown = [{"on": rule["on"], "webhook": {"url": "https://example.com/hook", "headers": {
        **rule["webhook"]["headers"], "X-More": "q" * 2800}}} for rule in shown]
    assert len(notify_json_of(grown)) < NOTIFY_MAX_BYTES  # what the bound measures
    r = await client.put(f"/jobs/{job_id}", json=_spec(grown))
    # the bound says: at most NOTIFY_MAX_BYTES as stored. Stored here would be ~115 KB
    assert r.status_code == 422 and [e["pointer"] for e in r.json()["errors"]] == ["/notify"], \
        (r.status_code, r.text[:300])


def notify_json_of(rules: list[dict[str, Any]]) -> bytes:
    from chronos_core.hookspec import NotifyRule
    return notify_json([NotifyRule.model_validate(r) for r in rules])


async def test_notify_bound_holds_through_patch(tmp_path: Path) -> None:
    """The same through PATCH (merge patch of one header per rule), on the service's SQLite file: the
    stored column is read back."""
    db = tmp_path / "chronos.db"
    app = build_app(scheduler=False, worker=False, database_url=f"sqlite:///{db}")
    async with running(app) as c:
        r = await c.post("/jobs", json=_spec(_rules({"Authorization": HOOK_SECRET, "X-Pad": "p" * 2800})))
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        notify = [{"on": ["failed"], "webhook": {"url": "https://example.com/hook", "headers": {
            "Authorization": "***", "X-Pad": "***", "X-More": "q" * 2800}}} for _ in range(20)]
        r = await c.patch(f"/jobs/{job_id}", json={"notify": notify},
                          headers={"Content-Type": "application/merge-patch+json"})
        status = r.status_code
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT length(CAST(notify AS BLOB)) FROM jobs").fetchone()
    assert stored <= NOTIFY_MAX_BYTES, f"PATCH answered {status}; notify stored: {stored} bytes"


# ------------------------------------------------------------------------------------------------ sound

async def test_a_spliced_summary_is_exact_whatever_the_job_holds() -> None:
    """The splice is positional (byte offsets of the summary's run of fields), never a search: a name,
    description and payload holding the very bytes around the summary, multi-byte characters before it
    (offsets are bytes), and summaries growing and shrinking give the model's bytes every time."""
    decoy = '","last_run":{"id":"x"},"last_success_at":null,"consecutive_failures":9,"next_runs":["'
    app = build_app(scheduler=False, worker=False)
    async with running(app) as c:
        r = await c.post("/jobs", json={
            "name": "é😀" + decoy[:150], "type": "shell", "schedule": "*/5 * * * *",
            "description": "😀" * 500 + decoy, "payload": {"command": decoy, "env": {"K": decoy + "😀"}},
            "notify": [{"on": ["failed"], "webhook": {"url": "https://example.com/h",
                                                       "headers": {"X": decoy}}}]})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        stored = await app.state.api.chronos.store.get_job(job_id)
    shown, types = app.state.api.shown, app.state.api.chronos.job_types
    t = datetime(2026, 12, 1, 9, tzinfo=UTC)
    big = JobSummary(last_run_id="r" * 36, last_run_status=RunStatus.TIMED_OUT, last_run_scheduled_for=t,
                     last_run_started_at=t, last_run_finished_at=t + timedelta(seconds=2.5),
                     last_success_at=t, last_failure_at=t, consecutive_failures=123456,
                     consecutive_failed_slots=99)
    small = JobSummary(consecutive_failures=1)
    for summary in [None, big, small, JobSummary(), big, None, big, small]:
        body = shown.json(stored, summary)
        expected = JobOut.of(stored, types, summary, Jobs.next_runs(stored))
        assert body == expected.model_dump_json(by_alias=True).encode()
        assert shown.nbytes == len(body) + 1024


async def test_the_budget_counts_what_is_kept_for_any_payload_shape() -> None:
    """Deep nesting, many small keys, long strings, many notify rules: what the cache retains
    (tracemalloc) is within 1.5x of what it counts."""
    deep: Any = {}
    for _ in range(29):
        deep = {"a": [deep]}
    payloads = {
        "deep": {"url": "https://example.com/x", "json": deep},
        "keys": {"url": "https://example.com/x", "json": {f"k{i}": i for i in range(40_000)}},
        "lists": {"url": "https://example.com/x", "json": [[]] * 150_000},
        "strings": {"url": "https://example.com/x", "json": ["s" * 1000] * 500},
    }
    app = build_app(scheduler=False, worker=False)
    async with running(app) as c:
        ids = []
        for name, payload in payloads.items():
            r = await c.post("/jobs", json={"name": name, "type": "http", "schedule": "@every 1h",
                                            "payload": payload,
                                            "notify": _rules({"X": "v" * 2000, "Y": "w"}, count=20)})
            assert r.status_code == 201, (name, r.text[:300])
            ids.append(r.json()["id"])
        jobs = [await app.state.api.chronos.store.get_job(i) for i in ids]
    shown = app.state.api.shown
    for i in ids:
        shown.forget(i)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for j in jobs:
        shown.json(j, JobSummary(consecutive_failures=1))
        shown.json(j, JobSummary(consecutive_failures=2))  # a splice
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    kept = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert len(shown) == len(jobs)
    assert kept < 1.5 * shown.nbytes, (kept, shown.nbytes)


async def test_date_times_valid_iso_forms_are_taken_and_numbers_refused(client: httpx.AsyncClient) -> None:
    ok = ["2027-01-01T09:00:00+02:00", "2027-01-01t09:00:00z", "2027-01-01T09:00:00.123456Z",
          "2027-01-01 09:00:00Z", "2027-01-01T09:00Z", "2027-01-01T09:00:00,5Z", "2027-01-01T09:00:00+0200"]
    for i, v in enumerate(ok):
        r = await client.post("/jobs", json={"name": f"ok-{i}", "type": "shell", "schedule": "@every 1h",
                                             "payload": {"command": "true"}, "start_at": v,
                                             "end_at": "2099-01-01T00:00:00Z",
                                             "exclude": [{"from": v, "to": "2098-01-01T00:00:00Z"}]})
        assert r.status_code == 201, (v, r.text)
    for v in [1800000000, 1.5, "1800000000", "0.0", True, "20270101T090000Z"]:
        for field in ("start_at", "end_at"):
            r = await client.post("/jobs", json={"name": "n", "type": "shell", "schedule": "@every 1h",
                                                 "payload": {"command": "true"}, field: v})
            assert r.status_code == 422, (field, v, r.text)
        r = await client.patch("/jobs/nope", json={"start_at": v},
                               headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code in (404, 422)


async def test_header_bound_counts_characters_and_rule_bytes_utf8() -> None:
    """HEADER_VALUE_MAX counts characters (8192 emoji = 32 KiB is one value), and NOTIFY_MAX_BYTES counts
    UTF-8 bytes: 2 such headers fit, 2 rules of them do not."""
    app = build_app(scheduler=False, worker=False)
    async with running(app) as c:
        one = _rules({"X": "😀" * HEADER_VALUE_MAX}, count=1)
        r = await c.post("/jobs", json=_spec(one))
        assert r.status_code == 201, r.text[:300]
        r = await c.post("/jobs", json={**_spec(_rules({"X": "😀" * HEADER_VALUE_MAX}, count=2)),
                                        "name": "two"})
        assert r.status_code == 422 and [e["pointer"] for e in r.json()["errors"]] == ["/notify"]


# ------------------------------------------------------------------------------------------------ F3

async def test_a_job_stored_before_the_header_bound_stays_readable(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A webhook header of 9,000 characters was valid before secfix (no bound; MySQL's TEXT held it too).
    After the upgrade the SQL store decodes ``notify`` with ``NotifyRule``'s validators, which now refuse
    it: every read of that row raises. Measured (probe, @every 1s job beside it, 4 s): GET /jobs 500 for
    every caller, the scheduler logged 'firing due slots failed' ~450 times and the other job ran once
    instead of four times."""
    import logging

    db = tmp_path / "chronos.db"
    app = build_app(scheduler=False, worker=False, database_url=f"sqlite:///{db}")
    async with running(app) as c:
        other = (await c.post("/jobs", json={"name": "other", "type": "shell", "schedule": "@every 1s",
                                             "payload": {"command": "true"}})).json()["id"]
        r = await c.post("/jobs", json=_spec(_rules({"X": "v"}, count=1)))
        assert r.status_code == 201
    with sqlite3.connect(db) as conn:  # the row as the release before secfix stored it
        conn.execute("UPDATE jobs SET notify = ? WHERE name = 'grows'", (
            '[{"on":["failed"],"webhook":{"url":"https://example.com/hook","headers":{"X":"' + "v" * 9000
            + '"}}}]',))
    caplog.set_level(logging.ERROR)
    app = build_app(database_url=f"sqlite:///{db}")
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                   base_url="http://localhost") as c:
        import asyncio
        await asyncio.sleep(2.5)
        listing = await c.get("/jobs")
        history = (await c.get(f"/jobs/{other}/history")).json()["items"]
    failures = [r for r in caplog.records if "firing due slots failed" in r.getMessage()]
    assert listing.status_code == 200 and not failures, \
        (listing.status_code, len(failures), f"runs of the other job: {len(history)}")
