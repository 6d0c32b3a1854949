"""The HTTP executor against a real local HTTP server: requests, outcomes, idempotency, SSRF guard."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator

import pytest

from chronos_adapters.executors import ExecutorConfig, HttpExecutor
from chronos_adapters.executors.http import is_public
from chronos_core.errors import ExecutionFailed
from chronos_core.ports import ExecutionResult
from tests.fixtures.httpserver import LocalHttpServer

from ._support import Lines, make_job, make_run


@pytest.fixture
async def http() -> AsyncIterator[HttpExecutor]:
    ex = HttpExecutor(allow_hosts=["127.0.0.1"], max_body=1000)
    await ex.start()
    try:
        yield ex
    finally:
        await ex.stop()


async def call(ex: HttpExecutor, payload: dict, log: Lines | None = None) -> ExecutionResult:  # type: ignore[type-arg]
    job = make_job("http", payload)
    return await asyncio.wait_for(ex.execute(job, make_run(job), log or Lines()), 30)


async def test_get_records_status_timing_body_and_sends_chronos_headers(
        http: HttpExecutor, http_server: LocalHttpServer) -> None:
    job = make_job("http", {"url": f"{http_server.url}/hello"})
    run = make_run(job)
    log = Lines()
    result = await http.execute(job, run, log)
    assert result.ok and result.exit_code == 200
    assert log.of()[0] == f"GET {http_server.url}/hello"
    assert log.of()[1].startswith("HTTP 200 OK in ") and log.of()[1].endswith("ms, 5 bytes")
    assert log.of()[2] == "hello"
    [req] = http_server.requests
    assert req.headers["idempotency-key"] == f"chronos:{job.id}:2026-01-02T03:04:05Z"
    assert req.headers["x-chronos-run-id"] == run.id
    assert req.headers["x-chronos-attempt"] == "1"


async def test_every_attempt_of_a_slot_carries_the_same_idempotency_key(
        http: HttpExecutor, http_server: LocalHttpServer) -> None:
    job = make_job("http", {"url": f"{http_server.url}/x"})
    first, second = make_run(job, attempt=1), make_run(job, attempt=2)
    await http.execute(job, first, Lines())
    await http.execute(job, second, Lines())
    a, b = http_server.requests
    assert a.headers["idempotency-key"] == b.headers["idempotency-key"]
    assert (a.headers["x-chronos-run-id"], b.headers["x-chronos-run-id"]) == (first.id, second.id)
    assert a.client_port == b.client_port  # one pooled connection, shared by the executor's client


async def test_post_with_json_query_and_headers(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    result = await call(http, {"method": "post", "url": f"{http_server.url}/in", "query": {"a": ["1", "2"]},
                               "headers": {"X-Thing": "yes", "Idempotency-Key": "mine"},
                               "json": {"n": 1}})
    assert result.ok
    [req] = http_server.requests
    assert (req.method, req.query, json.loads(req.body)) == ("POST", {"a": ["1", "2"]}, {"n": 1})
    assert req.headers["x-thing"] == "yes" and req.headers["content-type"] == "application/json"
    assert req.headers["idempotency-key"] == "mine"  # the job's own key wins


async def test_raw_body(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    assert (await call(http, {"method": "PUT", "url": f"{http_server.url}/raw", "body": "plain"})).ok
    assert http_server.requests[0].body == b"plain"


@pytest.mark.parametrize(("status", "expected", "ok", "retryable"), [
    (404, [], False, False),
    (400, [], False, False),
    (503, [], False, True),
    (429, [], False, True),
    (404, [404], True, True),
    (201, [], True, True),
    (200, [201], False, False),
])
async def test_status_classification(http: HttpExecutor, http_server: LocalHttpServer, status: int,
                                     expected: list[int], ok: bool, retryable: bool) -> None:
    http_server.respond("/s", (status, "body"))
    result = await call(http, {"url": f"{http_server.url}/s", "expected_status": expected})
    assert result.exit_code == status
    assert result.ok is ok
    if not ok:
        assert result.retryable is retryable
        assert f"HTTP {status}" in (result.error or "")


async def test_expect_body(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    http_server.respond("/health", (200, '{"status": "ok"}'))
    assert (await call(http, {"url": f"{http_server.url}/health", "expect_body": r'"status": "ok"'})).ok
    bad = await call(http, {"url": f"{http_server.url}/health", "expect_body": "degraded"})
    assert not bad.ok and "does not match" in (bad.error or "")


async def test_body_is_capped(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    log = Lines()
    result = await call(http, {"url": f"{http_server.url}/big?n=5000000"}, log)
    assert result.ok
    assert log.of()[-1] == "[chronos] body cut after 1000 bytes"
    assert log.of()[-2] == "x" * 1000


async def test_redirects_followed_only_when_asked(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    url = f"{http_server.url}/redirect?to={http_server.url}/target"
    log = Lines()
    followed = await call(http, {"url": url, "follow_redirects": True}, log)
    assert followed.ok and followed.exit_code == 200
    assert log.of()[1] == f"HTTP 302 Found -> {http_server.url}/target"
    not_followed = await call(http, {"url": url})
    assert not not_followed.ok and not_followed.exit_code == 302 and not not_followed.retryable


async def test_refused_connection_is_retryable(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    port = http_server.port
    http_server.stop()
    with pytest.raises(ExecutionFailed) as err:
        await call(http, {"url": f"http://127.0.0.1:{port}/"})
    assert err.value.retryable and "ConnectError" in str(err.value)


async def test_timeout_cancels_cleanly(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    job = make_job("http", {"url": f"{http_server.url}/slow?s=3"})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(http.execute(job, make_run(job), Lines()), 0.5)
    assert (await call(http, {"url": f"{http_server.url}/after"})).ok  # the shared client still works


async def test_a_cancel_while_a_redirect_is_logged_releases_its_connection(
        http: HttpExecutor, http_server: LocalHttpServer) -> None:
    """The redirect's response is logged before it is closed: a cancel (or a failing sink) there left
    it open, and its connection taken in the shared pool (100 of them and no HTTP job could connect)."""
    job = make_job("http", {"url": f"{http_server.url}/redirect?to={http_server.url}/target",
                            "follow_redirects": True})
    redirected = asyncio.Event()

    async def slow_sink(line: str, stream: str = "stdout") -> None:
        if " -> " in line:
            redirected.set()
            await asyncio.Event().wait()  # a sink that takes its time: the cancel comes meanwhile

    task = asyncio.create_task(http.execute(job, make_run(job), slow_sink))
    async with asyncio.timeout(10):
        await redirected.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert http._client is not None
    pool = http._client._transport._pool  # type: ignore[attr-defined]
    assert [c for c in pool.connections if not (c.is_idle() or c.is_closed())] == []


async def test_password_in_url_is_not_logged(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    log = Lines()
    await call(http, {"url": f"http://user:hunter2-pw@127.0.0.1:{http_server.port}/p"}, log)
    await call(http, {"url": f"{http_server.url}/q", "headers": {"Authorization": "Bearer tok-123456"}}, log)
    assert log.of()[0] == f"GET http://user:***@127.0.0.1:{http_server.port}/p"
    assert "hunter2-pw" not in log.text and "tok-123456" not in log.text
    assert http_server.requests[0].headers["authorization"].startswith("Basic ")
    assert http_server.requests[1].headers["authorization"] == "Bearer tok-123456"


# ------------------------------------------------------------------------------------------ SSRF guard

@pytest.fixture
async def guarded() -> AsyncIterator[HttpExecutor]:
    ex = HttpExecutor()  # no allow-list
    try:
        yield ex
    finally:
        await ex.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"])
async def test_loopback_is_refused_without_the_allow_list(guarded: HttpExecutor, http_server: LocalHttpServer,
                                                           host: str) -> None:
    with pytest.raises(ExecutionFailed) as err:
        await call(guarded, {"url": f"http://{host}:{http_server.port}/secret"})
    assert not err.value.retryable and "refusing to connect" in str(err.value)
    assert http_server.requests == []  # nothing reached the server


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/",
                                 "http://192.168.0.1/", "http://[fe80::1]/", "http://224.0.0.1/"])
async def test_private_metadata_and_multicast_are_refused(guarded: HttpExecutor, url: str) -> None:
    with pytest.raises(ExecutionFailed) as err:
        await call(guarded, {"url": url})
    assert not err.value.retryable and "refusing to connect" in str(err.value)


async def test_every_redirect_hop_is_checked(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    # 127.0.0.1 is allowed, the metadata address it redirects to is not
    url = f"{http_server.url}/redirect?to=http://169.254.169.254/latest/meta-data/"
    with pytest.raises(ExecutionFailed) as err:
        await call(http, {"url": url, "follow_redirects": True})
    assert not err.value.retryable and "169.254.169.254" in str(err.value)
    assert [r.path for r in http_server.requests] == ["/redirect"]


async def test_allow_list_by_host_name(http_server: LocalHttpServer) -> None:
    ex = HttpExecutor(allow_hosts=["LocalHost"])
    try:
        assert (await call(ex, {"url": f"http://localhost:{http_server.port}/n"})).ok
        with pytest.raises(ExecutionFailed):  # the name is allowed, not the address behind it
            await call(ex, {"url": f"http://127.0.0.1:{http_server.port}/n"})
    finally:
        await ex.stop()


async def test_allow_list_by_network(http_server: LocalHttpServer) -> None:
    ex = HttpExecutor(allow_hosts=["127.0.0.0/8"])
    try:
        assert (await call(ex, {"url": f"http://localhost:{http_server.port}/n"})).ok
    finally:
        await ex.stop()


async def test_star_turns_the_guard_off(http_server: LocalHttpServer) -> None:
    ex = HttpExecutor(allow_hosts=["*"])
    try:
        assert (await call(ex, {"url": f"http://localhost:{http_server.port}/n"})).ok
    finally:
        await ex.stop()


def test_config_accepts_a_comma_separated_allow_list() -> None:
    config = ExecutorConfig(http_allow_hosts=" 127.0.0.1, 10.0.0.0/8 ,")  # type: ignore[arg-type]
    assert config.http_allow_hosts == ("127.0.0.1", "10.0.0.0/8")
    assert ExecutorConfig(http_allow_hosts=["::1"]).http_allow_hosts == ("::1",)  # type: ignore[arg-type]


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False), ("10.0.0.1", False),
    ("172.16.5.4", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.251", False), ("240.0.0.1", False), ("255.255.255.255", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fd00:ec2::254", False), ("ff02::1", False),
    ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True), ("2002:a00:1::", False),
])
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public
