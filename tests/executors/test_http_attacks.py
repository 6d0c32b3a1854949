"""Issue #11 findings 2, 5 and 10 against the HTTP executor and a real local HTTP server: a catastrophic
``expect_body`` pattern, httpx's own log, redirects that carry secret headers away, the SSRF guard's
special-purpose ranges, and the two request-building bugs (``query`` vs the URL's query, URL userinfo vs
an explicit ``Authorization``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chronos_adapters.executors import HttpExecutor
from chronos_adapters.executors.http import is_public
from chronos_core.errors import ExecutionFailed, InvalidJob
from chronos_core.payloads import JobTypes
from chronos_core.ports import ExecutionResult
from tests.fixtures.httpserver import LocalHttpServer

from ._support import Lines, make_job, make_run


@pytest.fixture
async def http() -> AsyncIterator[HttpExecutor]:
    ex = HttpExecutor(allow_hosts=["127.0.0.1", "localhost"])
    await ex.start()
    try:
        yield ex
    finally:
        await ex.stop()


async def call(ex: HttpExecutor, payload: dict, log: Lines | None = None) -> ExecutionResult:  # type: ignore[type-arg]
    job = make_job("http", payload)
    return await ex.execute(job, make_run(job), log or Lines())


# ------------------------------------------------------------------------------ finding 2: the regex

@pytest.mark.timeout(120)  # Python's re needs minutes here (4x per 2 more characters); RE2 microseconds
async def test_a_catastrophic_pattern_is_matched_in_linear_time(http: HttpExecutor,
                                                                http_server: LocalHttpServer) -> None:
    http_server.respond("/body", (200, "a" * 34 + "!"))
    ticks = 0

    async def ticker() -> None:  # the event loop must keep running while the body is matched
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        result = await call(http, {"url": f"{http_server.url}/body", "expect_body": "^(a+)+$"})
    finally:
        beat.cancel()
    assert time.monotonic() - started < 30  # generous: the match itself takes microseconds
    assert not result.ok and result.retryable and "does not match" in (result.error or "")
    assert ticks > 0
    # and a matching body still matches
    http_server.respond("/ok", (200, "status: green"))
    assert (await call(http, {"url": f"{http_server.url}/ok", "expect_body": r"status:\s+gr(e+)n"})).ok


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?P<x>a)(?P=x)", r"a(?=b)", r"(?<!a)b", r"(?>a+)b",
                                     r"a++b", r"(a)?(?(1)b|c)", r"x\Z"])
def test_patterns_that_need_backtracking_are_refused_when_the_job_is_made(pattern: str) -> None:
    with pytest.raises(InvalidJob) as err:
        JobTypes().validate("http", {"url": "https://example.com/", "expect_body": pattern})
    assert err.value.errors[0].pointer == "/payload/expect_body"


async def test_a_pattern_re2_cannot_run_fails_the_run_without_retry(http: HttpExecutor,
                                                                    http_server: LocalHttpServer) -> None:
    with pytest.raises(ExecutionFailed) as err:  # (?a) is Python's ASCII flag: RE2 has none
        await call(http, {"url": f"{http_server.url}/x", "expect_body": "(?a)hello"})
    assert not err.value.retryable and "RE2" in str(err.value)
    assert http_server.requests == []  # refused before sending anything


# ------------------------------------------------------------------------- finding 5: httpx's logger

async def test_httpx_does_not_log_urls_with_secrets(http: HttpExecutor, http_server: LocalHttpServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://svc:pw-in-url-77@127.0.0.1:{http_server.port}/x?api_key=key-in-query-77"
    assert (await call(http, {"url": url})).ok
    assert http_server.requests  # it was sent
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "pw-in-url-77" not in logged and "key-in-query-77" not in logged


# ----------------------------------------------------------------------------- finding 10: redirects

SECRET_HEADERS = {"Authorization": "Bearer auth-77", "X-Api-Key": "api-key-77", "Private-Token": "pt-77777",
                  "Cookie": "session=cookie-77"}


async def test_a_redirect_to_another_origin_drops_every_secret_header(http: HttpExecutor,
                                                                      http_server: LocalHttpServer) -> None:
    other = f"http://localhost:{http_server.port}/landing"  # same server, another origin (host)
    result = await call(http, {"url": f"{http_server.url}/redirect?to={other}", "headers": SECRET_HEADERS,
                               "follow_redirects": True})
    assert result.ok
    [landing] = http_server.requests_to("/landing")
    for name in SECRET_HEADERS:
        assert name.lower() not in landing.headers, name
    assert landing.headers["x-chronos-job-id"]  # the rest is still sent


async def test_a_redirect_within_the_origin_keeps_them(http: HttpExecutor,
                                                       http_server: LocalHttpServer) -> None:
    same = f"{http_server.url}/landing"
    assert (await call(http, {"url": f"{http_server.url}/redirect?to={same}", "headers": SECRET_HEADERS,
                              "follow_redirects": True})).ok
    [landing] = http_server.requests_to("/landing")
    assert landing.headers["x-api-key"] == "api-key-77" and landing.headers["private-token"] == "pt-77777"


@contextlib.contextmanager
def redirecting_307(location: str) -> Iterator[int]:
    """A real server answering every POST with ``307 Location: <location>`` (keeps method and body)."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


async def test_a_body_is_not_resent_to_another_origin(http: HttpExecutor,
                                                      http_server: LocalHttpServer) -> None:
    with redirecting_307(f"http://localhost:{http_server.port}/landing") as port:
        with pytest.raises(ExecutionFailed) as err:
            await call(http, {"method": "POST", "url": f"http://127.0.0.1:{port}/",
                              "json": {"client_secret": "cs-777777"}, "follow_redirects": True})
    assert not err.value.retryable and "another origin" in str(err.value)
    assert http_server.requests_to("/landing") == []


# ------------------------------------------------------------------------------ finding 10: SSRF

@pytest.mark.parametrize("url", ["http://[fec0::1]/", "http://192.0.0.8/", "http://[64:ff9b::7f00:1]/",
                                 "http://198.18.0.1/", "http://[2001:db8::1]/", "http://[100::1]/",
                                 "http://[5f00::1]/", "http://[3fff::1]/", "http://192.0.2.1/"])
async def test_special_purpose_addresses_are_refused(url: str) -> None:
    ex = HttpExecutor()
    try:
        with pytest.raises(ExecutionFailed) as err:
            await call(ex, {"url": url})
        assert not err.value.retryable and "refusing to connect" in str(err.value)
    finally:
        await ex.stop()


@pytest.mark.parametrize(("address", "public"), [
    ("192.0.0.8", False), ("192.0.0.1", False), ("192.0.0.9", True), ("192.0.0.10", True),
    ("192.0.0.170", False), ("192.88.99.1", False), ("198.19.255.255", False), ("203.0.113.9", False),
    ("192.31.196.1", True), ("1.1.1.1", True),
    ("fec0::1", False), ("feff::1", False), ("64:ff9b::7f00:1", False), ("64:ff9b::808:808", True),
    ("64:ff9b:1::1", False), ("100::1", False), ("2001:2::1", False), ("2001:10::1", False),
    ("2001:1::1", True), ("2001:20::1", True), ("3fff::1", False), ("5f00::1", False),
    ("::127.0.0.1", False), ("4000::1", False), ("2a00:1450::1", True),
])
def test_the_iana_special_purpose_registries(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


# -------------------------------------------------------------- finding 10: the two request-building bugs

async def test_query_is_added_to_the_urls_own_query(http: HttpExecutor, http_server: LocalHttpServer) -> None:
    assert (await call(http, {"url": f"{http_server.url}/q?a=1&keep=yes", "query": {"b": ["2", "3"]}})).ok
    [req] = http_server.requests
    assert req.query == {"a": ["1"], "keep": ["yes"], "b": ["2", "3"]}


async def test_an_explicit_authorization_header_wins_over_url_userinfo(
        http: HttpExecutor, http_server: LocalHttpServer) -> None:
    url = f"http://user:pw-url-777@127.0.0.1:{http_server.port}/a"
    assert (await call(http, {"url": url, "headers": {"Authorization": "Bearer explicit-777"}})).ok
    assert (await call(http, {"url": url})).ok  # without a header the URL's user still logs in
    first, second = http_server.requests
    assert first.headers["authorization"] == "Bearer explicit-777"
    assert second.headers["authorization"].startswith("Basic ")


async def test_a_posix_class_is_accepted_and_matched_by_re2(http: HttpExecutor,
                                                            http_server: LocalHttpServer) -> None:
    # Python's re warns about "[[" (a possible nested set); with warnings as errors that was a 500
    JobTypes().validate("http", {"url": "https://example.com/", "expect_body": "^[[:alpha:]]+$"})
    http_server.respond("/alpha", (200, "hello"))
    assert (await call(http, {"url": f"{http_server.url}/alpha", "expect_body": "^[[:alpha:]]+$"})).ok


# ------------------------------------------------- bounds: a trickled body, a gzip bomb, RE2 programs

async def test_a_trickled_body_is_cut_at_the_exchange_timeout(http_server: LocalHttpServer) -> None:
    # a byte every 0.2 s never trips a per-read timeout: only a deadline on the whole exchange ends it
    ex = HttpExecutor(allow_hosts=["127.0.0.1"], timeout=1.5)
    try:
        async with asyncio.timeout(60):  # the bug: the run never ends (64 KiB at 5 bytes a second)
            with pytest.raises(ExecutionFailed) as err:
                await call(ex, {"url": f"{http_server.url}/trickle?s=0.2"})
    finally:
        await ex.stop()
    assert err.value.retryable and "no complete answer within 1.5s" in str(err.value)


async def test_a_gzip_bomb_is_inflated_only_to_max_body(http: HttpExecutor,
                                                        http_server: LocalHttpServer) -> None:
    import tracemalloc

    log = Lines()
    tracemalloc.start()
    try:  # 100 MB of zeros are 100 KB gzip-compressed; httpx inflated each read whole
        result = await call(http, {"url": f"{http_server.url}/gzip?n=100000000"}, log)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.ok and f"body cut after {http.max_body} bytes" in log.text
    assert peak < 20_000_000, f"{peak / 1e6:.0f} MB allocated for a {http.max_body}-byte body"
    log = Lines()
    assert (await call(http, {"url": f"{http_server.url}/gzip?n=10"}, log)).ok  # gzip still decoded
    assert "200 OK" in log.text and ", 10 bytes" in log.text


@pytest.mark.parametrize("pattern", ["[ab]{999}[ab]{999}x", ".{999}" * 32 + "z", r"[\w\d\s]{999}" * 4])
async def test_a_pattern_compiling_to_a_huge_program_is_refused(pattern: str, http: HttpExecutor,
                                                                http_server: LocalHttpServer) -> None:
    # [ab]{999}[ab]{999}x: 2,003 RE2 instructions, its DFA gives up, the NFA took 1 s per 64 KiB body;
    # .{999} x 32 took 16 s, in a thread of the event loop's default pool (the one resolving host names)
    errors = http.check_payload({"url": f"{http_server.url}/x", "expect_body": pattern})
    assert [e.pointer for e in errors] == ["/payload/expect_body"] and "too large" in errors[0].reason
    with pytest.raises(ExecutionFailed) as err:  # a job stored before the check: refused at the run
        await call(http, {"url": f"{http_server.url}/x", "expect_body": pattern})
    assert not err.value.retryable and "too large" in str(err.value)
    assert http_server.requests == []


def test_ordinary_patterns_pass_the_check(http: HttpExecutor) -> None:
    for pattern in (r'"status":\s*"ok"', r"(?i)healthy|up and running", r"^\{.*\"ok\":\s*true.*\}$",
                    r".{100}", r"[[:alpha:]]+", r"\d{1,3}(\.\d{1,3}){3}"):
        assert http.check_payload({"url": "https://example.com/", "expect_body": pattern}) == [], pattern
    errors = http.check_payload({"url": "https://example.com/", "expect_body": "(?a)x"})
    assert errors and "RE2" in errors[0].reason


async def test_a_token_the_target_hands_out_is_masked_in_the_output(http: HttpExecutor,
                                                                   http_server: LocalHttpServer) -> None:
    # a scheduled token refresh: the run's output (which read-only tokens read) showed the fresh token
    http_server.respond("/oauth/token", (200, '{"access_token": "fresh-token-8c1f2a9e", "token_type": '
                                              '"Bearer", "expires_in": 3600,\n"scope": {"refresh_token": '
                                              '"refresh-7d3b55aa"}}'))
    log = Lines()
    result = await call(http, {"url": f"{http_server.url}/oauth/token", "method": "POST",
                               "expect_body": "fresh-token-8c1f"}, log)
    assert result.ok  # the pattern matched the answer as it came
    assert "fresh-token" not in log.text and "refresh-7d3b" not in log.text
    assert '"access_token": "***", "token_type": "Bearer", "expires_in": 3600' in log.text


def test_a_pattern_is_checked_by_re2_not_by_pythons_re(http: HttpExecutor) -> None:
    # Python's re, compiling each pattern at validation on the event loop, built a bitmap per range:
    # 200 ranges up to U+10FFFF (3.4 KB, under the 4096 limit) held the loop 4 s per request. The
    # pattern is RE2's to judge (it runs it): RE2 syntax Python lacks now passes, RE2's limits apply.
    for pattern in (r"\pL+", r"\p{Greek}"):  # refused before: "bad escape \p" from Python's re
        payload = JobTypes().validate("http", {"url": "https://example.com/", "expect_body": pattern})
        assert http.check_payload(payload) == []
    wide = "(?i)" + "".join(f"[\\x{i % 200:02x}-\\x{{10fff{i % 10}}}]" for i in range(200))
    payload = JobTypes().validate("http", {"url": "https://example.com/", "expect_body": wide})
    assert [e.pointer for e in http.check_payload(payload)] == ["/payload/expect_body"]  # too large
