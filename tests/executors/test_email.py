"""The email executor against a real SMTP server (aiosmtpd in this process)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from chronos_adapters.executors import EmailExecutor
from chronos_core.errors import ExecutionFailed
from chronos_core.ports import ExecutionResult
from tests.fixtures.smtp import SMTP_PASSWORD, SMTP_USER, LocalSmtpServer

from ._support import Lines, make_job, make_run


async def send(ex: EmailExecutor, payload: dict, log: Lines | None = None) -> ExecutionResult:  # type: ignore[type-arg]
    job = make_job("email", payload)
    return await asyncio.wait_for(ex.execute(job, make_run(job), log or Lines()), 30)


def executor(server: LocalSmtpServer, **kw: object) -> EmailExecutor:
    return EmailExecutor(host=server.host, port=server.port, **kw)  # type: ignore[arg-type]


async def test_message_arrives_with_headers_and_both_bodies(smtp_server: LocalSmtpServer) -> None:
    log = Lines()
    result = await send(executor(smtp_server), {
        "to": ["Ann <ann@example.com>"], "cc": ["cid@example.com"], "bcc": ["hidden@example.com"],
        "sender": "chronos@example.org", "subject": "Nightly report é", "text": "all good\n",
        "html": "<p>all good</p>"}, log)
    assert result.ok, result.error
    [got] = smtp_server.received
    assert got.mail_from == "chronos@example.org"
    assert sorted(got.rcpt_tos) == ["ann@example.com", "cid@example.com", "hidden@example.com"]
    msg = got.message
    assert msg["From"] == "chronos@example.org"
    assert msg["To"] == "Ann <ann@example.com>"
    assert msg["Cc"] == "cid@example.com"
    assert msg["Subject"] == "Nightly report é"
    assert msg["Bcc"] is None and b"hidden@example.com" not in msg.as_bytes()
    assert msg["Message-ID"].endswith("@example.org>") and msg["Date"]
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and text.get_content().replace("\r\n", "\n") == "all good\n"
    assert html is not None and html.get_content().strip() == "<p>all good</p>"
    assert log.of()[-1] == "accepted for 3 recipient(s)"


async def test_html_only_and_default_sender(smtp_server: LocalSmtpServer) -> None:
    ex = executor(smtp_server, sender="Ops <ops@example.net>")
    assert (await send(ex, {"to": ["a@example.com"], "html": "<b>hi</b>"})).ok
    msg = smtp_server.received[0].message
    assert msg["From"] == "Ops <ops@example.net>" and smtp_server.received[0].mail_from == "ops@example.net"
    assert msg.get_content_type() == "text/html" and msg.get_content().strip() == "<b>hi</b>"


async def test_no_sender_anywhere_is_not_retried(smtp_server: LocalSmtpServer) -> None:
    with pytest.raises(ExecutionFailed) as err:
        await send(executor(smtp_server), {"to": ["a@example.com"], "text": "x"})
    assert not err.value.retryable and "sender" in str(err.value)
    assert smtp_server.received == []


async def test_header_injection_is_refused(smtp_server: LocalSmtpServer) -> None:
    with pytest.raises(ExecutionFailed) as err:
        await send(executor(smtp_server, sender="s@example.com"),
                   {"to": ["a@example.com"], "subject": "hi\r\nBcc: evil@example.com", "text": "x"})
    assert not err.value.retryable
    assert smtp_server.received == []


async def test_starttls_and_login(smtp_auth_server: LocalSmtpServer) -> None:
    ex = executor(smtp_auth_server, user=SMTP_USER, password=SMTP_PASSWORD, sender="s@example.com",
                  starttls=True, ca_file=smtp_auth_server.ca_file)
    assert (await send(ex, {"to": ["a@example.com"], "text": "x"})).ok
    assert len(smtp_auth_server.received) == 1


async def test_implicit_tls(smtps_server: LocalSmtpServer) -> None:
    ex = executor(smtps_server, ssl=True, ca_file=smtps_server.ca_file, sender="s@example.com")
    assert (await send(ex, {"to": ["a@example.com"], "text": "over TLS"})).ok
    assert smtps_server.received[0].message.get_content().strip() == "over TLS"


async def test_untrusted_certificate_is_not_retried(smtp_auth_server: LocalSmtpServer) -> None:
    ex = executor(smtp_auth_server, user=SMTP_USER, password=SMTP_PASSWORD, sender="s@example.com",
                  starttls=True)  # the system CAs do not know the test certificate
    with pytest.raises(ExecutionFailed) as err:
        await send(ex, {"to": ["a@example.com"], "text": "x"})
    assert not err.value.retryable and "certificate" in str(err.value)
    assert smtp_auth_server.received == []


async def test_failed_login_is_not_retried_and_hides_the_password(smtp_auth_server: LocalSmtpServer) -> None:
    ex = executor(smtp_auth_server, user=SMTP_USER, password="wrong-password-1", sender="s@example.com",
                  starttls=True, ca_file=smtp_auth_server.ca_file)
    with pytest.raises(ExecutionFailed) as err:
        await send(ex, {"to": ["a@example.com"], "text": "x"})
    assert not err.value.retryable and "authentication failed" in str(err.value)
    assert "wrong-password-1" not in str(err.value)
    assert smtp_auth_server.received == []


async def test_missing_login_where_required_is_not_retried(smtp_auth_server: LocalSmtpServer) -> None:
    with pytest.raises(ExecutionFailed) as err:
        await send(executor(smtp_auth_server, sender="s@example.com", starttls=True,
                            ca_file=smtp_auth_server.ca_file), {"to": ["a@example.com"], "text": "x"})
    assert not err.value.retryable and " 530 " in str(err.value)


async def test_refused_connection_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once it is closed
    with pytest.raises(ExecutionFailed) as err:
        await send(EmailExecutor(host="127.0.0.1", port=port, sender="s@example.com"),
                   {"to": ["a@example.com"], "text": "x"})
    assert err.value.retryable and "refused" in str(err.value)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "implicit-tls"])
async def test_cancel_cuts_a_hanging_session(tls: bool) -> None:
    """A server that accepts but never greets (nor answers the TLS handshake): the cancel ends the
    attempt and the connection. (With TLS the socket reached the session only after the handshake, and
    TLS detaches the plain socket it wraps: the cancel left the connection for the whole timeout.)"""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        ex = EmailExecutor(host="127.0.0.1", port=listener.getsockname()[1], sender="s@example.com",
                           timeout=60, ssl=tls)
        job = make_job("email", {"to": ["a@example.com"], "text": "x"})
        task = asyncio.create_task(ex.execute(job, make_run(job), Lines()))
        conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
        with conn:
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the client side was shut down: the server sees EOF long before the 60 s socket timeout
            async with asyncio.timeout(10):  # (after a TLS ClientHello, if any)
                while await loop.sock_recv(conn, 4096):
                    pass
    finally:
        listener.close()
