"""Email jobs: one message through SMTP with the standard library (``smtplib``, ``email.message``), in a
worker thread so the event loop never blocks.

* Settings: host, port, optional login, STARTTLS or implicit TLS (certificates verified), default sender,
  socket timeout. Bcc recipients get the message but never appear in its headers.
* Cancellation/timeout: the thread's socket is shut down, which ends whatever SMTP call it is blocked in.
* Failures: refused/dropped connections, timeouts and 4xx replies are retryable; failed authentication,
  certificate errors, 5xx replies (e.g. unknown recipients) and a missing sender are not. A message some
  recipients accepted is never retried (they would get it twice): the refused ones are reported.
* The SMTP password is masked in every error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import smtplib
import socket
import ssl
import threading
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import formatdate, make_msgid, parseaddr
from typing import ClassVar, TypeVar

from chronos_core.errors import ExecutionFailed
from chronos_core.models import Job, Run
from chronos_core.payloads import EmailPayload
from chronos_core.ports import ExecutionResult, Executor, LogSink

from ._common import Threads, mask, parse_payload

__all__ = ["EmailExecutor", "build_message"]

S = TypeVar("S", bound=smtplib.SMTP)


def build_message(p: EmailPayload, sender: str, run: Run | None = None) -> EmailMessage:
    """The message a job sends (``ValueError`` for a header that cannot be encoded)."""
    msg = EmailMessage()
    msg["From"] = sender
    if p.to:
        msg["To"] = ", ".join(p.to)
    if p.cc:
        msg["Cc"] = ", ".join(p.cc)
    msg["Subject"] = p.subject
    msg["Date"] = formatdate(usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "chronos"
    msg["Message-ID"] = make_msgid(idstring=run.id if run else None, domain=domain)
    if run is not None:
        msg["X-Chronos-Run-Id"] = run.id
    if p.text is not None:
        msg.set_content(p.text)
        if p.html is not None:
            msg.add_alternative(p.html, subtype="html")
    else:
        msg.set_content(p.html or "", subtype="html")
    _check_generated(msg)
    return msg


def _check_generated(msg: EmailMessage) -> None:
    """The headers of the message as it will be written are the headers it was given, one each: the
    email package of Python < 3.11.10 / 3.12.5 writes a header whose decoded value holds a line break
    as several lines (CVE-2024-6923); the payload check refuses those, this catches whatever it misses."""
    written = BytesHeaderParser(policy=email.policy.default).parsebytes(msg.as_bytes())
    if [k.lower() for k in written.keys()] != [k.lower() for k in msg.keys()]:
        extra = sorted(set(written.keys()) - set(msg.keys()))
        raise ValueError("a header would be written as several lines"
                         + (f" (it would add {', '.join(extra[:5])})" if extra else ""))


class _Session:
    """The socket of one send, so the event loop can cut it from outside the thread."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.aborted = False
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            # a second descriptor of the connection: TLS (implicit, or STARTTLS later) detaches ``sock``
            # itself from its descriptor when it wraps it, and a detached socket shuts nothing down
            self.sock = sock.dup()
            if self.aborted:
                self._shutdown()

    def release(self) -> None:
        """The send is over: close the session's descriptor (the connection is smtplib's to close)."""
        with self._lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on the connection


def _tracked(base: type[S], session: _Session) -> type[S]:
    """``base`` (``SMTP`` or ``SMTP_SSL``) handing its TCP socket to ``session`` as soon as it is
    connected: before the greeting and, with implicit TLS, before the handshake (which a server may
    leave unanswered)."""

    class Connected(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
            sock = super()._get_socket(host, port, timeout)  # SMTP's: the plain TCP connection
            session.attach(sock)
            return sock

    if base is smtplib.SMTP:
        return Connected  # type: ignore[return-value]
    # SMTP_SSL wraps what its super()._get_socket returns, which is now Connected's
    return type("Tracked", (base, Connected), {})


class EmailExecutor(Executor):
    type_name: ClassVar[str] = "email"

    def __init__(self, *, host: str = "localhost", port: int = 25, user: str | None = None,
                 password: str | None = None, starttls: bool = False, ssl: bool = False,
                 sender: str | None = None, timeout: float = 30.0, ca_file: str | None = None,
                 max_recipients: int = 100) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.starttls = starttls
        self.ssl = ssl
        self.sender = sender
        self.timeout = timeout
        self.ca_file = ca_file
        self.max_recipients = max_recipients
        self._threads = Threads("chronos-smtp")

    async def stop(self) -> None:
        self._threads.close()

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        p = parse_payload(EmailPayload, job.payload)
        sender = p.sender or self.sender
        if not sender:
            raise ExecutionFailed("no sender: the job gives none and CHRONOS_SMTP_SENDER is not set",
                                  retryable=False)
        try:
            msg = build_message(p, sender, run)
        except ValueError as exc:
            raise ExecutionFailed(f"invalid payload: {exc}", retryable=False) from None
        recipients = [parseaddr(a)[1] for a in (*p.to, *p.cc, *p.bcc)]  # entries are single addresses
        if len(recipients) > self.max_recipients:
            raise ExecutionFailed(f"{len(recipients)} recipients; at most {self.max_recipients} (the "
                                  "smtp_max_recipients setting)", retryable=False)
        await log(f"sending {msg['Message-ID']} to {len(recipients)} recipient(s) via "
                  f"{self.host}:{self.port}")
        session = _Session()
        try:
            refused = await self._threads.run(self._send, msg, parseaddr(sender)[1], recipients, session)
        except asyncio.CancelledError:
            session.abort()
            raise
        except Exception as exc:
            raise self._classify(exc) from None
        if refused:
            detail = "; ".join(f"{addr}: {code} {_text(reply)}" for addr, (code, reply) in refused.items())
            return ExecutionResult(ok=False, retryable=False,
                                   error=f"delivered, but {len(refused)} recipient(s) refused: {detail}")
        await log(f"accepted for {len(recipients)} recipient(s)")
        return ExecutionResult(ok=True)

    def _send(self, msg: EmailMessage, sender: str, recipients: list[str],
              session: _Session) -> dict[str, tuple[int, bytes]]:
        try:
            return self._session(msg, sender, recipients, session)
        finally:
            session.release()

    def _session(self, msg: EmailMessage, sender: str, recipients: list[str],
                 session: _Session) -> dict[str, tuple[int, bytes]]:
        context = ssl.create_default_context(cafile=self.ca_file)
        # connecting in the constructor also tells STARTTLS which host name to verify
        smtp: smtplib.SMTP
        if self.ssl:
            smtp = _tracked(smtplib.SMTP_SSL, session)(self.host, self.port, timeout=self.timeout,
                                                        context=context)
        else:
            smtp = _tracked(smtplib.SMTP, session)(self.host, self.port, timeout=self.timeout)
        try:
            smtp.ehlo_or_helo_if_needed()
            if self.starttls:
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.user and self.password:
                smtp.login(self.user, self.password)
            return smtp.send_message(msg, from_addr=sender, to_addrs=recipients)
        finally:
            with contextlib.suppress(Exception):
                smtp.quit()
            smtp.close()

    def _classify(self, exc: Exception) -> ExecutionFailed:
        where = f"{self.host}:{self.port}"
        retryable = True
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            message, retryable = f"SMTP authentication failed at {where}: {exc.smtp_code} " \
                                 f"{_text(exc.smtp_error)}", False
        elif isinstance(exc, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _ in exc.recipients.values()]
            retryable = all(400 <= c < 500 for c in codes)
            message = "every recipient was refused: " + "; ".join(
                f"{a}: {c} {_text(r)}" for a, (c, r) in exc.recipients.items())
        elif isinstance(exc, smtplib.SMTPNotSupportedError):
            message, retryable = f"{where} does not support it: {exc}", False
        elif isinstance(exc, smtplib.SMTPResponseException):
            retryable = 400 <= exc.smtp_code < 500
            message = f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            message, retryable = f"TLS certificate of {where} not trusted: {exc.verify_message}", False
        elif isinstance(exc, ConnectionRefusedError):
            message = f"connection refused by {where}"
        elif isinstance(exc, TimeoutError | socket.timeout):
            message = f"{where} did not answer within {self.timeout:g}s"
        elif isinstance(exc, smtplib.SMTPServerDisconnected | OSError | smtplib.SMTPException):
            message = f"SMTP to {where} failed: {type(exc).__name__}: {exc}"
        else:
            message = f"SMTP to {where} failed: {type(exc).__name__}: {exc}"
        return ExecutionFailed(mask(message, [self.password]), retryable=retryable)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
