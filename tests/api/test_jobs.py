"""The jobs endpoints through httpx against the real app (memory adapters), including each error status."""

from __future__ import annotations

import httpx

from tests.api.conftest import build_app, job, running, wait_for

PROBLEM = "application/problem+json"


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["type"].startswith("https://") and body["title"]
    return body


async def test_create_get_and_location(client: httpx.AsyncClient) -> None:
    r = await client.post("/jobs", json=job(schedule="*/5 * * * *", timezone="Europe/Berlin"))
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == f"/jobs/{created['id']}"
    assert created["next_run_at"] is not None and created["status"] == "active"
    got = await client.get(r.headers["location"])
    assert got.status_code == 200 and got.json() == created


async def test_invalid_cron_names_the_field_and_the_reason(client: httpx.AsyncClient) -> None:
    r = await client.post("/jobs", json=job(schedule="61 * * * *", timezone="Mars/Olympus"))
    body = _problem(r, 422)
    by_pointer = {e["pointer"]: e["reason"] for e in body["errors"]}
    assert set(by_pointer) == {"/schedule", "/timezone"}
    body = _problem(await client.post("/jobs", json=job(schedule="61 * * * *")), 422)
    by_pointer = {e["pointer"]: e["reason"] for e in body["errors"]}
    assert set(by_pointer) == {"/schedule"}
    assert "minute" in by_pointer["/schedule"] and "61" in by_pointer["/schedule"]
    body = _problem(await client.post("/jobs", json=job(timeout=-1, misfire="later")), 422)
    assert {e["pointer"] for e in body["errors"]} == {"/timeout", "/misfire"}


async def test_payload_errors_point_into_the_payload(client: httpx.AsyncClient) -> None:
    r = await client.post("/jobs", json={"name": "h", "type": "http", "payload": {"url": "ftp://x"}})
    body = _problem(r, 422)
    assert [e["pointer"] for e in body["errors"]] == ["/payload/url"]


async def test_unknown_type_and_non_object_body(client: httpx.AsyncClient) -> None:
    body = _problem(await client.post("/jobs", json=job(type="nope")), 422)
    assert body["errors"][0]["pointer"] == "/type"
    body = _problem(await client.post("/jobs", json=[1, 2]), 422)
    assert body["errors"][0]["pointer"] == "/"


async def test_shell_refused_unless_allowed() -> None:
    async with running(build_app(allow_shell=False)) as c:
        body = _problem(await c.post("/jobs", json=job()), 422)
        assert body["errors"][0]["pointer"] == "/type"
        assert "CHRONOS_ALLOW_SHELL" in body["errors"][0]["reason"]
        http = {"name": "web", "type": "http", "payload": {"url": "https://example.com/"}}
        assert (await c.post("/jobs", json=http)).status_code == 201


async def test_name_conflict_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post("/jobs", json=job())).status_code == 201
    body = _problem(await client.post("/jobs", json=job()), 409)
    assert "hello" in body["detail"]


async def test_blanks_at_a_names_ends_are_dropped_so_the_409_names_the_job(client: httpx.AsyncClient) -> None:
    """A job's name never has whitespace at its ends (the stores refuse it; MariaDB's unique index would
    not tell 'hello ' from 'hello'): the API drops it, as it does for every field, so 'hello ' beside
    'hello' is the name conflict naming 'hello', on every store, by POST, PUT and PATCH alike; and a
    chain's target is read the same way, so a chain to 'hello ' is a chain to 'hello'."""
    hello = (await client.post("/jobs", json=job())).json()
    other = (await client.post("/jobs", json=job(name="other"))).json()
    for name in ["hello ", " hello", "hello\u00a0"]:
        body = _problem(await client.post("/jobs", json=job(name=name)), 409)
        assert body["type"].endswith("name-conflict") and "'hello'" in body["detail"]
    body = _problem(await client.put(f"/jobs/{other['id']}", json=job(name="hello ")), 409)
    assert "'hello'" in body["detail"]
    body = _problem(await client.patch(f"/jobs/{other['id']}", json={"name": " hello"},
                                       headers={"content-type": "application/merge-patch+json"}), 409)
    assert "'hello'" in body["detail"]
    r = await client.post("/jobs", json=job(name=" then ", then=[{"job": "hello "}]))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "then" and r.json()["then"] == [{"on": ["succeeded"], "job": "hello"}]
    body = _problem(await client.put(f"/jobs/{hello['id']}", json=job(then=[{"job": "then\t"}])), 422)
    assert [e["pointer"] for e in body["errors"]] == ["/then"]  # hello -> then -> hello: the cycle
    assert "hello -> then -> hello" in body["errors"][0]["reason"]
    names = sorted(j["name"] for j in (await client.get("/jobs")).json()["items"])
    assert names == ["hello", "other", "then"]


async def test_media_type_syntax_and_size(client: httpx.AsyncClient) -> None:
    text = {"content-type": "text/plain"}
    _problem(await client.post("/jobs", content=b'{"name": "x"}', headers=text), 415)
    _problem(await client.post("/jobs", content=b'{"name": "x"}'), 415)  # no content type
    _problem(await client.post("/jobs", content=b'{"name": ', headers={"content-type": "application/json"}),
             400)
    _problem(await client.post("/jobs", content=b'{"timeout": NaN}',
                               headers={"content-type": "application/json"}), 400)
    surrogates = (b'{"name": "\\ud800", "type": "shell"}',
                  b'{"name": "x", "type": "shell", "payload": {"\\udfff": 1}}')
    for raw in surrogates:
        body = _problem(await client.post("/jobs", content=raw, headers={"content-type": "application/json"}),
                        400)  # valid JSON syntax, but not text: was a 500 when the answer was encoded
        assert "surrogate" in body["detail"]
    deep: dict = {"name": "deep", "type": "http", "payload": {"url": "https://e.com/", "json": []}}
    for _ in range(100):
        deep["payload"]["json"] = [deep["payload"]["json"]]
    body = _problem(await client.post("/jobs", json=deep), 422)  # a 500 from the serializer, before
    assert "nested deeper" in body["errors"][0]["reason"]
    big = {**job(), "description": "x" * (2 * 1024 * 1024)}
    _problem(await client.post("/jobs", json=big), 413)

    async def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"name": "big", "description": "'
        for _ in range(300):
            yield b"y" * 8192
        yield b'"}'

    _problem(await client.post("/jobs", content=chunks(), headers={"content-type": "application/json"}), 413)


async def test_idempotency_key_replays_and_refuses_another_body(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = await client.post("/jobs", json=job(), headers=headers)
    again = await client.post("/jobs", json=job(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len((await client.get("/jobs")).json()["items"]) == 1
    body = _problem(await client.post("/jobs", json=job(name="other"), headers=headers), 422)
    assert "Idempotency-Key" in body["detail"]
    # another key is another request
    assert (await client.post("/jobs", json=job(name="other"), headers={"Idempotency-Key": "k-2"})
            ).status_code == 201


async def test_list_filters_and_keyset_pagination(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        r = await client.post("/jobs", json=job(name=f"batch-{i}"))
        ids.append(r.json()["id"])
    await client.post("/jobs", json={"name": "web", "type": "http", "payload": {"url": "https://e.com/"}})
    await client.patch(f"/jobs/{ids[0]}/status", json={"status": "paused"})
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "type": "shell", **({"after": cursor} if cursor else {})}
        page = (await client.get("/jobs", params=params)).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    paused = (await client.get("/jobs", params={"status": "paused"})).json()["items"]
    assert [j["id"] for j in paused] == [ids[0]]
    named = (await client.get("/jobs", params={"name": "batch-3"})).json()["items"]
    assert [j["name"] for j in named] == ["batch-3"]
    body = _problem(await client.get("/jobs", params={"limit": 0}), 422)
    assert body["errors"][0]["pointer"] == "/limit"
    _problem(await client.get("/jobs", params={"status": "sleeping"}), 422)


async def test_secrets_are_never_returned_and_kept_on_put(client: httpx.AsyncClient) -> None:
    spec = {"name": "api", "type": "http",
            "payload": {"url": "https://example.com/hook",
                        "headers": {"Authorization": "Bearer s3cr3t-t0ken"}}}
    r = await client.post("/jobs", json=spec)
    assert "s3cr3t" not in r.text
    shown = r.json()
    assert shown["payload"]["headers"]["Authorization"] == "***"
    assert "s3cr3t" not in (await client.get("/jobs")).text
    # Edit what was shown and write it back: the secret stays.
    edit = {k: shown[k] for k in ("name", "type", "payload", "schedule", "timezone")}
    edit["schedule"] = "@hourly"
    put = await client.put(f"/jobs/{shown['id']}", json=edit)
    assert put.status_code == 200 and "s3cr3t" not in put.text and put.json()["schedule"] == "@hourly"
    chronos = client._transport.app.state.api.chronos  # type: ignore[attr-defined]
    stored = await chronos.jobs.get(shown["id"])
    assert stored.payload["headers"]["Authorization"] == "Bearer s3cr3t-t0ken"


async def test_put_errors(client: httpx.AsyncClient) -> None:
    a = (await client.post("/jobs", json=job(name="a"))).json()
    await client.post("/jobs", json=job(name="b"))
    _problem(await client.put("/jobs/missing", json=job(name="c")), 404)
    _problem(await client.put(f"/jobs/{a['id']}", json=job(name="b")), 409)
    body = _problem(await client.put(f"/jobs/{a['id']}", json=job(name="a", schedule="@every 0s")), 422)
    assert body["errors"][0]["pointer"] == "/schedule"
    _problem(await client.put(f"/jobs/{a['id']}", content=b"x", headers={"content-type": "text/csv"}), 415)


async def test_delete_job(client: httpx.AsyncClient) -> None:
    created = (await client.post("/jobs", json=job())).json()
    r = await client.delete(f"/jobs/{created['id']}")
    assert r.status_code == 204 and r.content == b""
    _problem(await client.get(f"/jobs/{created['id']}"), 404)
    _problem(await client.delete(f"/jobs/{created['id']}"), 404)


async def test_pause_and_resume(client: httpx.AsyncClient) -> None:
    created = (await client.post("/jobs", json=job(schedule="*/5 * * * * *"))).json()
    r = await client.patch(f"/jobs/{created['id']}/status", json={"status": "paused"})
    assert r.status_code == 200 and r.json()["status"] == "paused" and r.json()["next_run_at"] is None
    r = await client.patch(f"/jobs/{created['id']}/status", json={"status": "active"})
    assert r.json()["status"] == "active" and r.json()["next_run_at"] is not None
    body = _problem(await client.patch(f"/jobs/{created['id']}/status", json={"status": "asleep"}), 422)
    assert body["errors"][0]["pointer"] == "/status"
    _problem(await client.patch("/jobs/nope/status", json={"status": "paused"}), 404)


async def test_run_now_history_and_clear(client: httpx.AsyncClient) -> None:
    created = (await client.post("/jobs", json=job(payload={"command": "echo from-run"}))).json()
    run_ids = []
    for _ in range(3):
        r = await client.post(f"/jobs/{created['id']}/run")
        assert r.status_code == 202 and r.json()["status"] == "queued"
        assert r.headers["location"] == f"/runs/{r.json()['id']}"
        run_ids.append(r.json()["id"])

    async def finished() -> bool:
        runs = [(await client.get(f"/runs/{i}")).json() for i in run_ids]
        return all(r["status"] == "succeeded" for r in runs)

    await wait_for(finished)
    run = (await client.get(f"/runs/{run_ids[0]}")).json()
    assert "from-run" in run["output"] and run["exit_code"] == 0
    page1 = (await client.get(f"/jobs/{created['id']}/history", params={"limit": 2})).json()
    page2 = (await client.get(f"/jobs/{created['id']}/history",
                              params={"limit": 2, "before": page1["next_cursor"]})).json()
    assert [r["id"] for r in page1["items"] + page2["items"]] == run_ids[::-1]
    assert page2["next_cursor"] is None
    only_failed = (await client.get(f"/jobs/{created['id']}/history", params={"status": "failed"})).json()
    assert only_failed["items"] == []
    _problem(await client.get(f"/jobs/{created['id']}/history", params={"status": "bogus"}), 422)
    _problem(await client.get("/jobs/nope/history"), 404)
    _problem(await client.post("/jobs/nope/run"), 404)
    r = await client.delete(f"/jobs/{created['id']}/history")
    assert r.status_code == 200 and r.json() == {"deleted": 3}
    assert (await client.get(f"/jobs/{created['id']}/history")).json()["items"] == []
    _problem(await client.delete("/jobs/nope/history"), 404)
    _problem(await client.get(f"/runs/{run_ids[0]}"), 404)


async def test_concurrent_retries_with_one_idempotency_key_create_one_job(client: httpx.AsyncClient) -> None:
    import asyncio

    headers = {"Idempotency-Key": "same"}
    answers = await asyncio.gather(*(client.post("/jobs", json=job(), headers=headers) for _ in range(5)))
    assert {r.status_code for r in answers} == {201}
    assert len({r.json()["id"] for r in answers}) == 1
    assert len((await client.get("/jobs")).json()["items"]) == 1


def test_unexpected_errors_are_problems_without_internals() -> None:
    from chronos_app.api.problems import exception_problem

    response = exception_problem(RuntimeError("password=hunter2 at /srv/secret.py"), "/jobs")
    assert response.status_code == 500 and response.media_type == "application/problem+json"
    assert b"hunter2" not in response.body and b"secret.py" not in response.body
