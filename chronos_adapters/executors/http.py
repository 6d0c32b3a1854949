"""HTTP jobs: one request through a shared ``httpx.AsyncClient`` (opened in ``start``, closed in ``stop``).

* Headers sent besides the job's own: ``Idempotency-Key`` - the same for every attempt of one slot
  (``chronos:<job id>:<scheduled_for>``), so the target can de-duplicate retries - and
  ``X-Chronos-Run-Id`` / ``X-Chronos-Job-Id`` / ``X-Chronos-Attempt``. A job that sets its own
  ``Idempotency-Key`` keeps it.
* Outcome: the status code is the run's ``exit_code``; the status line with timing, each redirect hop and
  the first ``max_body`` bytes of the body are logged as ``run.log`` lines (values under secret-looking
  names of a JSON or form answer - a fresh ``access_token`` - as ``***``). Success is a status in
  ``expected_status`` (default: any 2xx) and, with ``expect_body``, a body matching that pattern.
* Bounds: the whole exchange - connecting, every redirect hop, the headers and the body - ends within
  ``timeout`` (a server trickling its body a byte at a time is cut there, not only when the job's own
  timeout comes); at most ``max_body`` bytes of the body are read and decoded (a gzip body is
  inflated only that far: a 200 KB "gzip bomb" no longer becomes 200 MB in the service);
  ``expect_body`` is an RE2 pattern of at most ``MAX_PATTERN_PROGRAM`` (2,000) instructions (RE2's
  fallback matcher takes time body x program), checked when the job is made, compiled and matched in the
  executor's threads, never on the event loop.
* Failures: 408/425/429/5xx, connection errors and timeouts are retryable; other unexpected statuses,
  refused addresses, bad URLs and too many redirects are not; a body that does not match is retryable.
* SSRF guard: the connection layer resolves every host itself and refuses loopback, private, link-local
  (cloud metadata), multicast, reserved and other non-global addresses unless ``allow_hosts`` lists the
  host name, the address or a network containing it. The socket then connects to the vetted address
  (pinned: no second DNS lookup can swap it), and since every redirect hop opens its connection through
  the same layer, redirects are checked too. Proxies from the environment are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import httpcore
import httpx
import re2

from chronos_core.errors import ExecutionFailed, FieldError
from chronos_core.models import Job, Run
from chronos_core.payloads import HttpPayload, is_secret_name
from chronos_core.ports import ExecutionResult, Executor, LogSink
from chronos_core.secrets import form_secrets, walk_named

from ._common import Threads, mask, parse_payload

__all__ = ["MAX_PATTERN_PROGRAM", "AddressGuard", "BlockedAddress", "HttpExecutor", "idempotency_key",
           "is_public", "pattern_problem", "quiet_httpx_logging"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_RETRYABLE_STATUS = {408, 425, 429}


class BlockedAddress(Exception):
    """The SSRF guard refused to connect to a host."""


class AddressGuard:
    """Which addresses HTTP jobs may connect to: every global unicast address, plus the allow-list."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.allow_all = False
        for entry in allow:
            entry = entry.strip()
            if not entry:
                continue
            if entry == "*":
                self.allow_all = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def host_allowed(self, host: str) -> bool:
        """The host name is on the allow-list (whatever it resolves to)."""
        return self.allow_all or host.lower().rstrip(".") in self.hosts

    def address_allowed(self, ip: IPAddress) -> bool:
        if any(ip.version == net.version and ip in net for net in self.networks):
            return True
        return is_public(ip)


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# The IANA IPv4/IPv6 Special-Purpose Address Registries (2025), entries not "globally reachable", plus
# multicast, the deprecated 6to4 relay anycast and site-local fec0::/10 (RFC 3879). Python's own
# ``is_global`` misses some in 3.11 (192.0.0.8, fec0::/10, 64:ff9b:1::/48, 5f00::/16, 3fff::/20).
_BLOCKED_V4 = _nets(
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32")
_GLOBAL_V4 = _nets("192.0.0.9/32", "192.0.0.10/32")  # PCP and TURN anycast, inside 192.0.0.0/24
_BLOCKED_V6 = _nets(
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "100:0:0:1::/64", "2001::/23",
    "2001:2::/48", "2001:10::/28", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10",
    "fec0::/10", "ff00::/8")
_GLOBAL_V6 = _nets("2001:1::1/128", "2001:1::2/128", "2001:1::3/128", "2001:3::/32", "2001:4:112::/48",
                   "2001:20::/28", "2001:30::/28")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(ip: IPAddress) -> bool:
    """A globally reachable unicast address by the IANA special-purpose registries: not loopback,
    private, link-local (metadata), CGNAT, documentation, benchmarking, reserved, multicast,
    unspecified, site-local; IPv4 embedded in IPv6 (mapped, NAT64 64:ff9b::/96, 6to4, Teredo) is judged
    as that IPv4 address; IPv6 outside 2000::/3 is not global unicast."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64:
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return is_public(embedded) and (ip.teredo is None or is_public(ip.teredo[0]))
        if any(ip in net for net in _GLOBAL_V6):
            return True
        return ip in _GLOBAL_UNICAST_V6 and not any(ip in net for net in _BLOCKED_V6)
    if any(ip in net for net in _GLOBAL_V4):
        return True
    return not any(ip in net for net in _BLOCKED_V4)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, vets, then connects to the vetted address (TLS still verifies the host name)."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        if self._guard.host_allowed(host):
            return await self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                                 socket_options=socket_options)
        try:
            async with asyncio.timeout(timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        addresses: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        blocked = [str(ip) for ip in addresses if not self._guard.address_allowed(ip)]
        if blocked or not addresses:
            raise BlockedAddress(
                f"refusing to connect to {host} ({', '.join(blocked) or 'no address'}): loopback, private, "
                "link-local and other non-public addresses must be listed in CHRONOS_HTTP_ALLOW_HOSTS")
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout=timeout,
                                                     local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("HTTP jobs do not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, guard: AddressGuard, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        # Same pool httpx builds, with our network backend (httpx has no parameter for it).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(guard),
        )


def idempotency_key(job: Job, run: Run) -> str:
    """The same for every attempt of one slot of one job."""
    slot = run.scheduled_for.isoformat().replace("+00:00", "Z")
    return f"chronos:{job.id}:{slot}"


class HttpExecutor(Executor):
    type_name: ClassVar[str] = "http"

    def __init__(self, *, allow_hosts: Iterable[str] = (), timeout: float = 300.0,
                 max_body: int = 64 * 1024, max_redirects: int = 10) -> None:
        self.guard = AddressGuard(allow_hosts)
        self.timeout = timeout
        self.max_body = max_body
        self.max_redirects = max_redirects
        self._client: httpx.AsyncClient | None = None
        self._threads = Threads("chronos-re2", size=4)

    async def start(self) -> None:
        quiet_httpx_logging()
        if self._client is None:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
            self._client = httpx.AsyncClient(
                transport=_GuardedTransport(self.guard, limits), timeout=self.timeout, trust_env=False,
                max_redirects=self.max_redirects, headers={"User-Agent": "chronos"})

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        self._threads.close()

    def check_payload(self, payload: Mapping[str, Any]) -> list[FieldError]:
        """Header names and values that no request can carry (a CR or LF would split the header)."""
        headers = payload.get("headers") or {}
        errors = []
        for name, value in headers.items() if isinstance(headers, Mapping) else ():
            if not _TOKEN.fullmatch(str(name)):
                errors.append(FieldError(("payload", "headers", name), "not a header name (letters, digits "
                                         "and !#$%&'*+-.^_`|~ only)"))
            elif any(c in str(value) for c in "\r\n\x00"):
                errors.append(FieldError(("payload", "headers", name), "a header value is one line: no CR, "
                                         "LF or NUL"))
        pattern = payload.get("expect_body")
        if isinstance(pattern, str):
            problem = pattern_problem(pattern)
            if problem:
                errors.append(FieldError(("payload", "expect_body"), problem))
        return errors

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        p = parse_payload(HttpPayload, job.payload)
        if self._client is None:
            await self.start()
        assert self._client is not None
        # RE2 compiles in time linear in the program it builds, bounded, but not on the event loop
        pattern = await self._threads.run(_compile, p.expect_body) if p.expect_body is not None else None
        headers = httpx.Headers(p.headers)
        headers.setdefault("Idempotency-Key", idempotency_key(job, run))
        headers["X-Chronos-Run-Id"] = run.id
        headers["X-Chronos-Job-Id"] = job.id
        headers["X-Chronos-Attempt"] = str(run.attempt)
        try:
            url = httpx.URL(p.url)
            if p.query:  # added to the URL's own query string, which stays
                url = url.copy_merge_params(p.query)
            if "authorization" in headers and url.userinfo:
                url = url.copy_with(userinfo=b"")  # the job's explicit header wins over the URL's user
            request = self._client.build_request(
                p.method, url, headers=headers,
                json=p.json_body, content=p.body.encode() if p.body is not None else None)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError) as exc:
            raise ExecutionFailed(f"bad request: {exc}", retryable=False) from None
        await log(f"{p.method} {_shown_url(request.url)}")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):  # the whole exchange, not each read
                response = await self._send(request, p.follow_redirects, log)
                try:
                    body, truncated = await self._read_capped(response)
                except httpx.TimeoutException as exc:
                    raise ExecutionFailed(f"{type(exc).__name__} while reading the body") from None
                except (httpx.TransportError, zlib.error) as exc:
                    raise ExecutionFailed(f"{type(exc).__name__} while reading the body: {exc}") from None
                finally:
                    await response.aclose()
        except TimeoutError:
            raise ExecutionFailed(f"no complete answer within {self.timeout:g}s (the HTTP timeout, for "
                                  "connecting, redirects, headers and body together)") from None
        elapsed = (time.perf_counter() - started) * 1000
        status = response.status_code
        await log(f"HTTP {status} {response.reason_phrase} in {elapsed:.0f} ms, "
                  f"{len(body)}{'+' if truncated else ''} bytes")
        text = body.decode(response.encoding or "utf-8", "replace")
        fresh = answer_secrets(text, response.headers.get("content-type", ""))
        for line in text.splitlines():
            await log(mask(line, fresh) if fresh else line)
        if truncated:
            await log(f"[chronos] body cut after {self.max_body} bytes")
        expected = p.expected_status
        if not (status in expected if expected else 200 <= status < 300):
            want = ", ".join(map(str, expected)) if expected else "2xx"
            retryable = _retryable_status(status)
            error = f"HTTP {status} {response.reason_phrase} (expected {want})"
            if not retryable:
                error += f"; not retried: HTTP {status} is permanent"
            return ExecutionResult(ok=False, exit_code=status, retryable=retryable, error=error)
        # RE2 runs in linear time; off the event loop all the same (a large pattern over 64 KiB)
        if pattern is not None and await self._threads.run(pattern.search, text) is None:
            return ExecutionResult(ok=False, exit_code=status, retryable=True,
                                   error=f"the response body does not match {p.expect_body!r}")
        return ExecutionResult(ok=True, exit_code=status)

    async def _send(self, request: httpx.Request, follow: bool, log: LogSink) -> httpx.Response:
        """Send ``request``, following redirects here (not in httpx) when asked: on a hop to another
        origin every secret-named header (``Authorization``, ``X-Api-Key``, ``Private-Token``,
        ``Cookie``...) is dropped, and a body is never re-sent to another origin."""
        assert self._client is not None
        origin = _origin(request.url)
        for hop in range(self.max_redirects + 1):
            try:
                response = await self._client.send(request, stream=True, follow_redirects=False)
            except BlockedAddress as exc:
                raise ExecutionFailed(str(exc), retryable=False) from None
            except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError) as exc:
                raise ExecutionFailed(f"bad request: {exc}", retryable=False) from None
            except httpx.TimeoutException as exc:
                raise ExecutionFailed(f"{type(exc).__name__}: no answer within {self.timeout:g}s") from None
            except httpx.TransportError as exc:
                raise ExecutionFailed(f"{type(exc).__name__}: {exc or 'connection failed'}") from None
            following = follow and response.next_request is not None
            if not following:
                return response
            if hop == self.max_redirects:
                await response.aclose()
                raise ExecutionFailed(f"more than {self.max_redirects} redirects", retryable=False)
            nxt = response.next_request
            assert nxt is not None
            try:  # (a cancel or a failing sink while it logs: the response is closed all the same)
                await log(f"HTTP {response.status_code} {response.reason_phrase} -> {_shown_url(nxt.url)}")
            finally:
                await response.aclose()
            if _origin(nxt.url) != origin:
                if nxt.headers.get("content-length", "0") != "0" or "transfer-encoding" in nxt.headers:
                    raise ExecutionFailed(f"not following a {response.status_code} redirect to another "
                                          "origin: it would re-send the request body (and any secret in "
                                          "it) there", retryable=False)
                for name in [n for n in nxt.headers if is_secret_name(n) or n.lower() == "cookie"]:
                    del nxt.headers[name]
            request = nxt
        raise AssertionError("unreachable")

    async def _read_capped(self, response: httpx.Response) -> tuple[bytes, bool]:
        """At most ``max_body`` bytes of the decoded body, and never more than that decoded at once
        (httpx inflates each chunk whole); the rest is not read."""
        buf = bytearray()
        decoder = _Inflater.for_encoding(response.headers.get("content-encoding", ""))
        raw = 0
        async for chunk in response.aiter_raw():
            raw += len(chunk)
            data, more = decoder.feed(chunk, self.max_body - len(buf) + 1)
            buf += data
            if len(buf) > self.max_body or more or raw > self.max_body + 65536:
                return bytes(buf[: self.max_body]), True
            if decoder.done:
                break
        return bytes(buf), False


class _Inflater:
    """A body's ``Content-Encoding`` undone with a bound on the output of each step (``identity``,
    ``gzip``, ``deflate``; like httpx, any other coding is shown as it came)."""

    def __init__(self, wbits: int | None) -> None:
        self._wbits = wbits
        self._z = zlib.decompressobj(wbits) if wbits is not None else None
        self._first = True
        self.done = False

    @classmethod
    def for_encoding(cls, header: str) -> _Inflater:
        coding = header.split(",")[-1].strip().lower()
        if coding in ("gzip", "x-gzip"):
            return cls(16 + zlib.MAX_WBITS)
        if coding == "deflate":
            return cls(zlib.MAX_WBITS)
        return cls(None)

    def feed(self, chunk: bytes, limit: int) -> tuple[bytes, bool]:
        """(at most ``limit`` decoded bytes, whether this chunk holds more than that)."""
        if self._z is None:
            return chunk[:limit], len(chunk) > limit
        try:
            out = self._z.decompress(chunk, limit)
        except zlib.error:
            if not (self._first and self._wbits == zlib.MAX_WBITS):
                raise
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)  # "deflate" sent raw, without the zlib header
            out = self._z.decompress(chunk, limit)
        self._first = False
        self.done = self._z.eof
        return out, bool(self._z.unconsumed_tail)


_MIN_ANSWER_SECRET = 8  # shorter values under secret-looking names ("Bearer", counts) are not tokens


def answer_secrets(text: str, content_type: str) -> list[str]:
    """Values under secret-looking names in a JSON or form answer - the ``access_token`` a token
    endpoint hands out - so the run's output, which read-only tokens read, shows them as ``***``."""
    found: list[str] = []
    head = text.lstrip()[:1]
    if head in ("{", "[") or "json" in content_type:
        try:
            found = [v for _, v in walk_named(json.loads(text))]
        except ValueError:  # not JSON (or cut by max_body): nothing to find by name
            return []
    elif "x-www-form-urlencoded" in content_type:
        found = [v for _, v in form_secrets(text.strip())]
    return [v for v in dict.fromkeys(found) if len(v) >= _MIN_ANSWER_SECRET][:100]


def _retryable_status(status: int) -> bool:
    return status in _RETRYABLE_STATUS or status >= 500


def _shown_url(url: httpx.URL) -> str:
    """The URL without its password (the query is masked by the worker from ``payload.secrets()``)."""
    if url.password:
        url = url.copy_with(username=url.username, password="***")
    elif url.username:  # https://TOKEN@host/: a user name alone is usually a token
        url = url.copy_with(username="***")
    return str(url)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_CHECK_OPTIONS = re2.Options()  # a small memory budget: a pattern too big fails to compile fast
_RE2_CHECK_OPTIONS.log_errors = False
_RE2_CHECK_OPTIONS.max_mem = 1 << 20
# RE2 instructions of an expect_body pattern: "status":\s*"ok" is 20, .{100} is 805. RE2 matches in time
# linear in the body, but when its DFA runs out of states ([ab]{999}[ab]{999}x) its NFA takes body x
# program steps: 16 s for a 193-character pattern over a 64 KiB body at the 130,000 RE2 allowed; about
# 1 s at this bound, which still lets \pL+ \pN+ (1,446) through
MAX_PATTERN_PROGRAM = 2000


def pattern_problem(pattern: str) -> str | None:
    """Why RE2 will not run ``pattern`` as an ``expect_body``, or None; bounded work (at most about a
    megabyte of program), so it may run on the event loop when a job is checked."""
    try:
        compiled = re2.compile(pattern, _RE2_CHECK_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) \
            else str(exc)
        if "too large" in detail:
            return f"the pattern is too large (more than {MAX_PATTERN_PROGRAM} RE2 instructions)"
        return f"not a pattern RE2 can run: {detail}"
    size = max(compiled.programsize, compiled.reverseprogramsize)
    if size > MAX_PATTERN_PROGRAM:
        return (f"the pattern is too large ({size} RE2 instructions, at most {MAX_PATTERN_PROGRAM}): "
                "a long repetition of a class such as .{999} is matched in time body x pattern")
    return None


def _compile(pattern: str) -> Any:
    """``expect_body`` as an RE2 pattern: matching takes time linear in the body, whatever the pattern
    (Python's ``re`` can take exponential time: ``^(a+)+$``). The job's check refuses what RE2 lacks or
    what compiles too large when a job is made; anything still refused here (a job stored before) fails
    the run, not retried. Runs in a thread."""
    problem = pattern_problem(pattern)
    if problem:
        raise ExecutionFailed(f"expect_body: {problem}", retryable=False)
    return re2.compile(pattern, _RE2_OPTIONS)


class _QuietHttpx(logging.Filter):
    """Drops httpx's ``HTTP Request: GET http://user:pw@host/?api_key=...`` lines: they carry the URL
    with its secrets; each run logs its own masked request line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("HTTP Request:")


_QUIET_HTTPX = _QuietHttpx()


def quiet_httpx_logging() -> None:
    """Install the filter on httpx's logger (idempotent)."""
    logging.getLogger("httpx").addFilter(_QUIET_HTTPX)
