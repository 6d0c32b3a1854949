"""The hostile review 'secattack' (/work/coord/review-secattack.md): its proofs of concept, now regression
tests of the fixes (branch secfix; each failed on jsonnum, before them) - F1 the shown-jobs cache's byte
budget, F2 a too-long notify on MySQL (tests/api/test_notify_bounds.py, tests/sql/test_data_errors.py),
F3 since/until at the ends of the date range, F4 the public /ready - and the pins of what was attacked
and found safe."""

from __future__ import annotations

import contextlib
import gc
import logging
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import build_app, running, wait_for

MIB = 1024 * 1024
WRITE = "write-token-5b0e4c7d9a1f2e3b"
READ = "readonly-token-8c2d6e0f4a7b9c1d"
AUTH_W = {"Authorization": f"Bearer {WRITE}"}
AUTH_R = {"Authorization": f"Bearer {READ}"}


async def retained(step: Callable[[], Awaitable[None]]) -> int:
    """Bytes still allocated after ``step`` that were not before it (as tests/api/test_shown_bounds.py)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        await step()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(d.size_diff for d in after.compare_to(before, "filename"))


def sqlite_app(tmp_path: Path, **settings: object) -> Any:
    return build_app(scheduler=False, worker=False, database_url=f"sqlite:///{tmp_path}/chronos.db",
                     api_tokens=[WRITE], readonly_tokens=[READ], **settings)


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """As ``running``, but a 500 is answered as a server answers it (httpx's ASGITransport would raise
    the app's error in the test instead)."""
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                   base_url="http://localhost") as c:
        yield c


# ------------------------------------------------------------------------------------------------ F1

def many_objects_job(i: int) -> dict[str, object]:
    # ~900 KB of JSON, under the 1 MiB body limit: 300,000 empty objects. Each is 3 bytes of JSON and a
    # new dict (64 bytes) plus a list slot (8) once masked (redact_named copies every container)
    return {"name": f"objects-{i}", "type": "http", "schedule": "@every 1h",
            "payload": {"url": "https://example.com/hook", "method": "POST", "json": [{}] * 300_000}}


async def test_shown_jobs_budget_holds_for_a_payload_of_many_small_objects(tmp_path: Path) -> None:
    app = sqlite_app(tmp_path)
    shown = app.state.api.shown
    shown.max_bytes = 4 * MIB
    async with running(app) as c:
        ids = []
        for i in range(3):
            r = await c.post("/jobs", json=many_objects_job(i), headers=AUTH_W)
            assert r.status_code == 201, r.text[:300]
            ids.append(r.json()["id"])

        async def read_as_viewer() -> None:  # a read-only token fills the cache
            for job_id in ids:
                assert (await c.get(f"/jobs/{job_id}", headers=AUTH_R)).status_code == 200

        for job_id in ids:  # (the creations kept them)
            shown.forget(job_id)
        grown = await retained(read_as_viewer)
        counted = shown.nbytes
    # test_shown_bounds allows the 4 MiB budget twice over for allocator and bookkeeping
    assert grown < 8 * MIB, (f"{grown / MIB:.1f} MiB kept by {len(shown)} entries counted as "
                             f"{counted / MIB:.1f} MiB (budget {shown.max_bytes / MIB:.0f} MiB)")


# ------------------------------------------------------------------------------------------------ F2

@pytest.mark.mysql
async def test_mysql_too_long_notify_logs_no_secret(clean_mysql_url: str, caplog: pytest.LogCaptureFixture
                                                    ) -> None:
    secret = "s3cret-env-value-7f41c2aa"
    header_secret = "Bearer hook-secret-19d3e8b2"
    app = build_app(scheduler=False, worker=False, database_url=clean_mysql_url,
                    api_tokens=[WRITE], readonly_tokens=[READ])
    spec = {"name": "big-notify", "type": "shell", "schedule": "@every 1h",
            "payload": {"command": "true", "env": {"DB_PASSWORD": secret}},
            # every field within its model's bounds: 20 rules, 50 headers each (values are unbounded)
            "notify": [{"on": ["failed"], "webhook": {"url": "https://example.com/hook",
                                                      "headers": {"Authorization": header_secret,
                                                                  "X-Pad": "p" * 4000}}}] * 20}
    caplog.set_level(logging.ERROR)
    async with served(app) as c:
        r = await c.post("/jobs", json=spec, headers=AUTH_W)
    logged = caplog.text
    assert secret not in logged and header_secret not in logged, (r.status_code, logged[-1500:])
    assert r.status_code in (201, 422), r.text


# ------------------------------------------------------------------------------------------------ F3

@pytest.mark.parametrize("query", ["until=9999-12-31T23:00:00-05:00", "since=0001-01-01T00:30:00%2B01:00",
                                   "until=9999-12-31T23:59:59.999999-00:01"])
async def test_runs_time_filters_at_the_edges_are_a_client_error(tmp_path: Path, query: str) -> None:
    async with served(sqlite_app(tmp_path)) as c:
        r = await c.get(f"/runs?{query}", headers=AUTH_R)
        assert r.status_code == 422, (r.status_code, r.text)
        assert r.json()["errors"][0]["pointer"] == "/" + query.partition("=")[0], r.text
        assert "supported range" in r.text
        edge = "until=9999-12-31T23:59:59Z" if query.startswith("until") else "since=0001-01-01T00:00:00Z"
        assert (await c.get(f"/runs?{edge}", headers=AUTH_R)).status_code == 200  # the ends themselves


async def test_body_date_times_at_the_edges_are_a_client_error(tmp_path: Path) -> None:
    """start_at/end_at and an @at time without a UTC time are refused at their field; an exclusion's
    from/to at the ends is stored as text and compared as an aware time (no UTC conversion): taken."""
    base = {"type": "http", "payload": {"url": "https://example.com/x"}}
    async with served(sqlite_app(tmp_path)) as c:
        for i, (extra, pointer) in enumerate((
                ({"start_at": "9999-12-31T23:00:00-05:00"}, "/start_at"),
                ({"end_at": "0001-01-01T00:30:00+01:00"}, "/end_at"),
                ({"schedule": "@at 9999-12-31T23:00:00-05:00"}, "/schedule"))):
            r = await c.post("/jobs", json={**base, "name": f"edge-{i}", **extra}, headers=AUTH_W)
            assert r.status_code == 422 and [e["pointer"] for e in r.json()["errors"]] == [pointer], r.text
        r = await c.post("/jobs", json={**base, "name": "excluded", "schedule": "@every 1h",
                                        "timezone": "America/New_York",
                                        "exclude": [{"from": "9999-12-31T20:00:00",
                                                     "to": "9999-12-31T23:30:00"},
                                                    {"from": "0001-01-01T00:00:00+01:00",
                                                     "to": "0001-01-01T00:30:00+01:00"}]}, headers=AUTH_W)
        assert r.status_code == 201, r.text
        shown = await c.get(f"/jobs/{r.json()['id']}", headers=AUTH_R)  # next_runs checks the exclusions
        assert shown.status_code == 200 and len(shown.json()["next_runs"]) == 3, shown.text


# ----------------------------------------------------------------------------------- attacked, safe

async def test_read_only_token_cannot_write_and_sees_masked_jobs_through_the_caches(tmp_path: Path) -> None:
    """A secret changed by a PUT is never shown (ShownJobs re-keys on updated_at), to either token; the
    read-only token's writes are 403 on every write route; no token: 401."""
    secret1, secret2 = "first-secret-value-a1b2", "second-secret-value-c3d4"
    async with running(sqlite_app(tmp_path)) as c:
        spec = {"name": "s", "type": "shell", "schedule": "@every 1h",
                "payload": {"command": "true", "env": {"API_KEY": secret1, "PLAIN": "v1"}}}
        r = await c.post("/jobs", json=spec, headers=AUTH_W)
        assert r.status_code == 201
        job_id = r.json()["id"]
        for _ in range(2):  # cached now
            for h in (AUTH_R, AUTH_W):
                page = await c.get("/jobs", headers=h)
                assert secret1 not in page.text
                assert page.json()["items"][0]["payload"]["env"]["API_KEY"] == "***"
        spec["payload"] = {"command": "true", "env": {"API_KEY": secret2, "PLAIN": "v2"}}
        assert (await c.put(f"/jobs/{job_id}", json=spec, headers=AUTH_W)).status_code == 200
        for h in (AUTH_R, AUTH_W):
            for url in ("/jobs", f"/jobs/{job_id}", "/jobs?name=s", "/jobs?status=active&type=shell"):
                r = await c.get(url, headers=h)
                assert r.status_code == 200 and secret1 not in r.text and secret2 not in r.text
                assert '"PLAIN":"v2"' in r.text  # not a stale copy
        for method, url in (("POST", "/jobs"), ("PUT", f"/jobs/{job_id}"), ("PATCH", f"/jobs/{job_id}"),
                            ("DELETE", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/run"),
                            ("DELETE", f"/jobs/{job_id}/history"), ("PATCH", f"/jobs/{job_id}/status"),
                            ("POST", "/jobs/apply"), ("POST", "/runs/x/cancel")):
            r = await c.request(method, url, headers=AUTH_R, json={})
            assert r.status_code == 403, (method, url, r.status_code)
            r = await c.request(method, url, json={})
            assert r.status_code == 401, (method, url, r.status_code)
        for url in ("/jobs", "/runs", f"/jobs/{job_id}/history", "/job-digests?ids=" + job_id):
            assert (await c.get(url)).status_code == 401


async def test_listing_filters_are_bounded(tmp_path: Path) -> None:
    """GET /jobs and /runs: every new filter is length-bounded and parsed, none is a pattern (no regex
    reaches the store: a name prefix is compared exactly, % and _ are not wildcards)."""
    async with running(sqlite_app(tmp_path)) as c:
        for name in ("a%", "_", "%"):
            spec = {"name": name, "type": "shell", "payload": {"command": "true"}}
            assert (await c.post("/jobs", json=spec, headers=AUTH_W)).status_code == 201
        names = [j["name"] for j in (await c.get("/jobs?name=%25", headers=AUTH_R)).json()["items"]]
        assert names == ["%"]
        names = [j["name"] for j in (await c.get("/jobs?name=_", headers=AUTH_R)).json()["items"]]
        assert names == ["_"]
        for query in ("name=" + "x" * 201, "last_status=" + "failed," * 40, "type=" + "t" * 51,
                      "limit=501", "after=zz", "last_status=nope"):
            assert (await c.get(f"/jobs?{query}", headers=AUTH_R)).status_code == 422, query
        for query in ("status=" + "failed," * 40, "trigger=" + "manual," * 20, "since=0", "since=1700000000",
                      "until=2027-01-01T00:00:00", "limit=0", "before=x", "job_id=../x"):
            assert (await c.get(f"/runs?{query}", headers=AUTH_R)).status_code == 422, query


# ------------------------------------------------------------------------------------------------ F4

@pytest.mark.mysql
async def test_public_readiness_does_not_tell_the_database_account(clean_mysql_url: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    import pymysql  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    from tests.fixtures.mysql import _admin, mysql_server_url

    user, password = "secattack_ready", "first-Pw-5e6f7a8b"
    admin = _admin(mysql_server_url())
    db = make_url(clean_mysql_url)
    try:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
            cur.execute(f"GRANT ALL ON `{db.database}`.* TO '{user}'@'%'")
        url = db.set(username=user, password=password).render_as_string(hide_password=False)
        app = build_app(scheduler=False, worker=False, database_url=url, api_tokens=[WRITE])
        async with running(app) as c:
            assert (await c.get("/ready")).status_code == 200
            with admin.cursor() as cur:  # the operator rotates the password; the pool reconnects
                cur.execute(f"ALTER USER '{user}'@'%' IDENTIFIED BY 'second-Pw-1c2d3e4f'")
                cur.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (user,))
                for (pid,) in cur.fetchall():
                    with contextlib.suppress(pymysql.Error):
                        cur.execute(f"KILL {int(pid)}")
            caplog.set_level(logging.WARNING, "chronos.api")
            r = await c.get("/ready")  # no token: /ready is public
        assert r.status_code == 503, r.text
        assert user not in r.text and "127.0.0.1" not in r.text, r.text
        assert r.json()["type"].endswith("/store-unavailable") and r.headers["Retry-After"] == "5"
        assert f"'{user}'" in caplog.text and "second-Pw" not in caplog.text  # the operator reads why
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()


# ------------------------------------------------------------------------------ API thread: safe

@pytest.mark.parametrize("url_kind", ["sqlite", "memory"])
async def test_api_thread_keeps_tokens_and_masking(tmp_path: Path, url_kind: str) -> None:
    """chronos serve's layout (engines on this loop, the API over a ChronosFront on a thread of its own,
    both loops in debug mode): a read-only token cannot trigger or write, and sees the run a write token
    triggered with the job's secret and the service's own token masked in output, history and listings."""
    from tests.api.test_api_thread import threaded

    url = f"sqlite:///{tmp_path}/chronos.db" if url_kind == "sqlite" else "memory"
    secret = "thread-secret-value-0a1b2c3d"
    async with threaded(url, api_tokens=[WRITE], readonly_tokens=[READ], allow_shell=True) as t:
        async with httpx.AsyncClient(base_url=t.base, timeout=30) as c:
            # the service's token printed, but not in the job's definition (split by a quote)
            spec = {"name": "leaky", "type": "shell",
                    "payload": {"command": f"echo $API_TOKEN {WRITE[:8]}\"{WRITE[8:]}\"",
                                "env": {"API_TOKEN": secret}}}
            assert (await c.post("/jobs", json=spec, headers=AUTH_R)).status_code == 403
            r = await c.post("/jobs", json=spec, headers=AUTH_W)
            assert r.status_code == 201 and secret not in r.text
            job_id = r.json()["id"]
            assert (await c.post(f"/jobs/{job_id}/run", headers=AUTH_R)).status_code == 403
            run = (await c.post(f"/jobs/{job_id}/run", headers=AUTH_W)).json()

            async def ended() -> Any:
                got = (await c.get(f"/runs/{run['id']}", headers=AUTH_R)).json()
                return got if got["status"] not in ("queued", "running") else None

            done = await wait_for(ended, 30)
            assert done["status"] == "succeeded", done
            for _ in range(2):  # the second time from ShownRuns/ShownJobs
                for path in (f"/runs/{run['id']}", f"/runs/{run['id']}/log", "/runs", f"/jobs/{job_id}",
                             f"/jobs/{job_id}/history", "/jobs", "/stats", f"/job-digests?ids={job_id}"):
                    r = await c.get(path, headers=AUTH_R)
                    assert r.status_code == 200, (path, r.text)
                    for s in (secret, WRITE):
                        assert s not in r.text, (path, r.text)
            assert "***" in (await c.get(f"/runs/{run['id']}/log", headers=AUTH_R)).text
