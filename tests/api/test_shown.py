"""Jobs and runs written straight to JSON (chronos_app.api.shown) are what their models write, and the
per-version cache of masked payloads and next fire times follows every change of a job."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from chronos_app.api.schemas import JOB_OUT_SOURCES, RUN_OUT_SOURCES, JobOut, JobPage, RunOut, RunPage
from chronos_app.api.shown import Bounded, ShownRuns, runs_page_json
from chronos_core import JobSummary, Payload, Run, RunStatus, Trigger
from chronos_core.operations import Jobs
from tests.api.conftest import build_app, job, running, wait_for

SECRET = "Bearer tok-3f9a81c2d7e6b5a4"
HOOK_SECRET = "whsec-0a1b2c3d4e5f6a7b"


def rich_job(**changes: Any) -> dict[str, Any]:
    """A job using every part of a job as shown: secrets in the payload and in a webhook, chain, exclude,
    jitter, a retry policy, a window."""
    return job(name="rich", schedule="*/5 * * * *", timezone="Europe/Berlin", description="all of it",
               payload={"command": "echo hi", "env": {"API_TOKEN": SECRET, "MODE": "fast"}},
               retry={"strategy": "linear", "max_attempts": 2, "delay": 1}, timeout=30, jitter=0.5,
               notify=[{"on": ["failed"], "webhook": {"url": "https://hooks.example.com/a/b?k=v",
                                                      "secret": HOOK_SECRET,
                                                      "headers": {"X-Token": "header-secret-1"}}}],
               exclude=[{"cron": "0 12 * * *"}], start_at="2020-01-01T00:00:00Z", **changes)


def same_as_model(model: type[pydantic.BaseModel], body: bytes) -> None:
    """``body`` is valid as ``model`` (extra fields forbidden) and is what the model writes for it."""
    assert model.model_validate_json(body).model_dump_json(by_alias=True).encode() == body


async def test_answers_are_what_their_models_write(client: httpx.AsyncClient) -> None:
    created = await client.post("/jobs", json=rich_job())
    assert created.status_code == 201, created.text
    same_as_model(JobOut, created.content)
    job_id = created.json()["id"]
    run = await client.post(f"/jobs/{job_id}/run")
    same_as_model(RunOut, run.content)

    async def finished() -> bool:
        return (await client.get(f"/runs/{run.json()['id']}")).json()["status"] == "succeeded"
    await wait_for(finished)
    for path, model in ((f"/jobs/{job_id}", JobOut), ("/jobs", JobPage), ("/jobs?limit=1", JobPage),
                        (f"/jobs/{job_id}/history", RunPage), ("/runs", RunPage),
                        (f"/runs/{run.json()['id']}", RunOut)):
        r = await client.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", path
        same_as_model(model, r.content)
        for secret in (SECRET, HOOK_SECRET, "header-secret-1"):
            assert secret not in r.text, path
    shown = (await client.get(f"/jobs/{job_id}")).json()
    assert shown["last_run"]["id"] == run.json()["id"] and shown["last_run"]["status"] == "succeeded"
    assert len(shown["next_runs"]) == 3 and shown["payload"]["env"] == {"API_TOKEN": "***", "MODE": "fast"}


async def test_a_changed_job_is_shown_changed() -> None:
    async with running(build_app(scheduler=False)) as c:
        job_id = (await c.post("/jobs", json=rich_job())).json()["id"]
        before = (await c.get("/jobs")).json()["items"][0]
        assert before["payload"]["env"]["MODE"] == "fast"
        new_secret = "Bearer tok-new-9c8b7a6d5e4f"
        patched = await c.patch(f"/jobs/{job_id}", json={"payload": {"env": {"API_TOKEN": new_secret,
                                                                             "MODE": "slow"}},
                                                        "schedule": "0 3 * * *"},
                                headers={"Content-Type": "application/merge-patch+json"})
        assert patched.status_code == 200, patched.text
        for shown in (patched.json(), (await c.get("/jobs")).json()["items"][0],
                      (await c.get(f"/jobs/{job_id}")).json()):
            assert shown["payload"]["env"] == {"API_TOKEN": "***", "MODE": "slow"}
            assert new_secret not in str(shown) and SECRET not in str(shown)
            assert shown["schedule"] == "0 3 * * *"
            assert shown["next_runs"] != before["next_runs"]
            assert [t[11:16] for t in shown["next_runs"]] == ["02:00"] * 3  # 03:00 in Berlin, UTC+1
        paused = (await c.patch(f"/jobs/{job_id}/status", json={"status": "paused"})).json()
        assert paused["status"] == "paused" and paused["next_runs"] == []
        assert (await c.get("/jobs")).json()["items"][0]["next_runs"] == []
        assert (await c.get("/jobs")).json()["items"][0]["last_run"] is None
        run = (await c.post(f"/jobs/{job_id}/run")).json()

        async def summarised() -> Any:
            last = (await c.get("/jobs")).json()["items"][0]["last_run"]
            return last is not None and last["id"] == run["id"]
        await wait_for(summarised)  # the summary of the same job version, shown changed


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_read_only_token_pages_through_jobs_with_their_summaries_and_sees_no_secret(
        backend: str, tmp_path: Path) -> None:
    """GET /jobs reads its page and each job's summary in one store call (``list_jobs_with_summaries``,
    one query on SQL): every job on every page, filtered or not, is what GET /jobs/{id} shows, with its
    last run and every secret masked, for a read-only token."""
    url = "memory" if backend == "memory" else f"sqlite:///{tmp_path / 'chronos.db'}"
    app = build_app(scheduler=False, database_url=url, api_tokens=["adm1n-t0k"], readonly_tokens=["r3ad-t0k"])
    admin, viewer = {"Authorization": "Bearer adm1n-t0k"}, {"Authorization": "Bearer r3ad-t0k"}
    async with running(app) as c:
        ids = []
        for i in range(5):
            created = await c.post("/jobs", json={**rich_job(), "name": f"rich-{i}"}, headers=admin)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        run = (await c.post(f"/jobs/{ids[3]}/run", headers=admin)).json()

        async def finished() -> bool:
            r = await c.get(f"/runs/{run['id']}", headers=viewer)
            return bool(r.json()["status"] == "succeeded")
        await wait_for(finished)
        seen, after = [], None
        for query in ({"limit": "2"}, {"limit": "2"}, {"limit": "2"}):
            r = await c.get("/jobs", params={**query, **({"after": after} if after else {})}, headers=viewer)
            assert r.status_code == 200, r.text
            page = r.json()
            seen += page["items"]
            after = page["next_cursor"]
            for secret in (SECRET, HOOK_SECRET, "header-secret-1"):
                assert secret not in r.text
        assert after is None and [j["id"] for j in seen] == sorted(ids)
        for shown in seen:
            assert shown == (await c.get(f"/jobs/{shown['id']}", headers=viewer)).json()
            assert shown["payload"]["env"] == {"API_TOKEN": "***", "MODE": "fast"}
            assert shown["notify"][0]["webhook"]["secret"] == "***"
        assert [j["last_run"] is not None for j in seen] == [i == ids[3] for i in sorted(ids)]
        done = (await c.get("/jobs", params={"last_status": "succeeded"}, headers=viewer)).json()
        assert [j["id"] for j in done["items"]] == [ids[3]]
        assert done["items"][0]["last_run"]["id"] == run["id"]
        assert SECRET not in str(done) and HOOK_SECRET not in str(done)


async def test_a_kept_job_is_only_its_json_and_a_new_summary_is_spliced_into_it() -> None:
    """ShownJobs keeps a job's JSON bytes and nothing else (review-secattack F1: the masked parts were
    kept too, and a payload of many small objects weighed ~24x its JSON); a new summary of runs replaces
    its part of the bytes, which are then what the model writes for the job with that summary."""
    app = build_app(scheduler=False, worker=False)
    async with running(app) as c:
        job_id = (await c.post("/jobs", json=rich_job())).json()["id"]
        stored = await app.state.api.chronos.store.get_job(job_id)
    shown, types = app.state.api.shown, app.state.api.chronos.job_types
    t = datetime(2026, 12, 1, 9, tzinfo=UTC)
    summaries = [None, JobSummary(), JobSummary(last_run_id="r1", last_run_status=RunStatus.FAILED,
                                                last_run_scheduled_for=t, last_run_started_at=t,
                                                last_run_finished_at=t + timedelta(seconds=2.5),
                                                last_failure_at=t, consecutive_failures=1,
                                                consecutive_failed_slots=1),
                 None]
    for summary in summaries:
        body = shown.json(stored, summary)
        entry = shown._entries[job_id]
        assert body == entry.json
        assert [type(getattr(entry, f.name)).__name__ for f in dataclasses.fields(entry)] == \
            ["tuple", "tuple" if summary else "NoneType", "bytes", "int", "int"]  # no masked parts
        assert shown.nbytes == len(body) + 1024
        expected = JobOut.of(stored, types, summary, Jobs.next_runs(stored))
        assert body == expected.model_dump_json(by_alias=True).encode()
    assert b'"consecutive_failures":0' in shown.json(stored, None)


class OpenPayload(Payload):
    note: str = ""


class SecretPayload(OpenPayload):
    def redacted(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json"), "note": "***"}


async def test_a_type_registered_again_masks_with_its_new_model() -> None:
    app = build_app(scheduler=False, worker=False)
    types = app.state.api.chronos.job_types
    types.register("memo", OpenPayload)
    async with running(app) as c:
        job_id = (await c.post("/jobs", json={"name": "m", "type": "memo",
                                              "payload": {"note": "launch code 0000"}})).json()["id"]
        assert (await c.get("/jobs")).json()["items"][0]["payload"]["note"] == "launch code 0000"
        types.register("memo", SecretPayload)  # the same job version, masked by the new model from now on
        assert (await c.get("/jobs")).json()["items"][0]["payload"]["note"] == "***"
        assert (await c.get(f"/jobs/{job_id}")).json()["payload"]["note"] == "***"


def test_every_field_shown_has_one_source() -> None:
    for model, sources in ((JobOut, JOB_OUT_SOURCES), (RunOut, RUN_OUT_SOURCES)):
        named = [name for names in sources.values() for name in names]
        assert sorted(named) == sorted(model.model_fields), model.__name__


def _run(i: int, status: RunStatus = RunStatus.SUCCEEDED, output: str = "fetched 42 rows\n") -> Run:
    at = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    ended = status in (RunStatus.SUCCEEDED, RunStatus.FAILED)
    return Run(id=f"run-{i:04d}", job_id="job-1", scheduled_for=at, trigger=Trigger.SCHEDULE, attempt=1,
               status=status, created_at=at, due_at=at + timedelta(seconds=0.5), started_at=at,
               finished_at=at + timedelta(seconds=2) if ended else None, exit_code=0 if ended else None,
               output=output, output_lines=output.count("\n"), result={"rows": 42} if ended else None)


def test_kept_runs_are_the_bytes_of_a_page_written_afresh_and_follow_a_run_to_its_end() -> None:
    shown = ShownRuns(max_entries=3, max_bytes=100_000)
    runs = [_run(i) for i in range(5)] + [_run(5, RunStatus.RUNNING)]
    for _ in range(2):  # written, then kept
        assert shown.page(runs, "run-0000") == runs_page_json(runs, "run-0000")
        same_as_model(RunPage, shown.page(runs, None))
    assert len(shown) == 3  # the newest 3 that ended; a running run is never kept
    ended = dataclasses.replace(runs[5], status=RunStatus.FAILED, finished_at=runs[5].started_at,
                                exit_code=1, output="boom\n", output_lines=1, error="exit 1")
    assert shown.page([ended], None) == runs_page_json([ended], None)
    assert b'"status":"failed"' in shown.json(ended)
    big = _run(9, output="x" * 2000)  # over a hundredth of the bound: written, not kept
    assert shown.json(big) == runs_page_json([big], None)[10:-21] and len(shown) == 3
    assert shown.nbytes <= shown.max_bytes


def test_kept_runs_stay_within_their_bytes() -> None:
    shown = ShownRuns(max_bytes=500_000)
    for i in range(1000):
        body = shown.json(_run(i, output="y" * 1500))
    each = len(body) + 256  # the JSON and the entry's overhead
    assert shown.nbytes <= 500_000 < shown.nbytes + each  # full, not over
    assert len(shown) == shown.nbytes // each and "run-0999" in shown._entries  # the newest kept


class _Kept(Bounded[str]):
    """The bounded cache alone: keep and weigh as ShownJobs/ShownRuns do."""

    def keep(self, key: str, cost: int) -> None:
        self._keep(key, key.upper(), cost)

    def weigh(self, key: str, cost: int) -> None:
        self._weigh(key, cost)

    def keys(self) -> list[str]:
        return list(self._entries)


def _counted(kept: _Kept) -> None:
    """What it says it holds is what it holds, within both bounds."""
    assert kept.nbytes == sum(kept._costs.values()) and set(kept._costs) == set(kept.keys())
    assert len(kept) <= kept.max_entries and kept.nbytes <= kept.max_bytes


def test_the_bounded_cache_drops_the_oldest_past_its_count() -> None:
    kept = _Kept(max_entries=3, max_bytes=1000)
    for key in "abcd":
        kept.keep(key, 10)
        _counted(kept)
    assert kept.keys() == ["b", "c", "d"] and kept.nbytes == 30
    assert kept._entries.get("b") == "B"  # a read does not make it newer: kept order, not use
    kept.keep("e", 10)
    assert kept.keys() == ["c", "d", "e"]
    kept.keep("c", 20)  # kept again: its new cost, and the newest
    assert kept.keys() == ["d", "e", "c"] and kept.nbytes == 40
    _counted(kept)


def test_the_bounded_cache_drops_the_oldest_past_its_bytes() -> None:
    kept = _Kept(max_entries=100, max_bytes=100)
    for key in "abcd":
        kept.keep(key, 30)
    assert kept.keys() == ["b", "c", "d"] and kept.nbytes == 90  # a 4th would be 120
    kept.keep("e", 100)  # the whole budget: the others go
    assert kept.keys() == ["e"] and kept.nbytes == 100
    kept.keep("f", 1)
    assert kept.keys() == ["f"] and kept.nbytes == 1
    _counted(kept)


def test_a_value_over_the_whole_budget_is_not_kept_and_pushes_none_out() -> None:
    kept = _Kept(max_entries=100, max_bytes=100)
    kept.keep("a", 40)
    kept.keep("b", 40)
    kept.keep("huge", 101)
    assert kept.keys() == ["a", "b"] and kept.nbytes == 80
    kept.keep("a", 101)  # kept again too large: its old value goes as well (it is stale)
    assert kept.keys() == ["b"] and kept.nbytes == 40
    _counted(kept)


def test_weighing_a_value_again_counts_its_new_cost() -> None:
    kept = _Kept(max_entries=100, max_bytes=100)
    for key in "abc":
        kept.keep(key, 10)
    kept.weigh("c", 80)  # grown to the bound exactly: all stay
    assert kept.keys() == ["a", "b", "c"] and kept.nbytes == 100
    kept.weigh("c", 85)  # past it: the oldest go until it fits
    assert kept.keys() == ["b", "c"] and kept.nbytes == 95
    kept.weigh("c", 5)  # shrunk
    assert kept.nbytes == 15
    kept.weigh("b", 200)  # over the budget alone: only itself goes
    assert kept.keys() == ["c"] and kept.nbytes == 5
    _counted(kept)


def test_forgetting_and_changed_bounds() -> None:
    kept = _Kept(max_entries=10, max_bytes=100)
    for key in "abcde":
        kept.keep(key, 10)
    kept.forget("c")
    kept.forget("c")  # gone already: nothing happens
    kept.forget("zzz")
    assert kept.keys() == ["a", "b", "d", "e"] and kept.nbytes == 40
    kept.max_entries, kept.max_bytes = 2, 25  # applied at the next keep
    kept.keep("f", 10)
    assert kept.keys() == ["e", "f"] and kept.nbytes == 20
    _counted(kept)
    kept.max_entries = 0  # nothing is kept
    kept.keep("g", 1)
    assert len(kept) == 0 and kept.nbytes == 0
