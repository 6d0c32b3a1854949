"""Notification channels (``NotifyChannel``): ``webhook`` and ``email``, delivered through the HTTP and
email executors so that what guards an HTTP job guards a webhook too (the SSRF guard and its
allow-list, redirects not followed, secret masking) and email goes through the configured SMTP server.

* webhook: ``POST`` of ``hooks.webhook_body`` (the message as JSON, or ``{"text": ...}`` for ``format:
  slack``) with ``Content-Type: application/json``, ``X-Chronos-Event``, ``X-Chronos-Delivery`` (the
  notice id: the same on every attempt, so a receiver can drop a repeat; also the ``Idempotency-Key``),
  and with a ``secret`` ``X-Chronos-Signature: sha256=<hex HMAC-SHA256 of the body>``. Any 2xx is
  delivered; 408/429/5xx and connection errors are tried again, other statuses and refused addresses
  are not.
* email: a text message to ``to`` through the SMTP settings, subject ``[chronos] <job>: <event>``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from chronos_core.errors import ExecutionFailed
from chronos_core.hooks import Delivery, Notice, message_subject, message_text, sign, webhook_body
from chronos_core.hookspec import EmailChannel, WebhookChannel
from chronos_core.models import Job, JobStatus, MisfirePolicy, OverlapPolicy, Run, RunStatus, Trigger
from chronos_core.payloads import EmailPayload, HttpPayload, header_problem
from chronos_core.ports import ExecutionResult, Executor, NotifyChannel
from chronos_core.retry import RetryPolicy
from chronos_core.secrets import text_secrets

__all__ = ["EmailNotifier", "WebhookNotifier", "notify_channels"]

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _carrier(notice: Notice, type_: str, payload: dict[str, object]) -> tuple[Job, Run]:
    """A job and run that stand for the notice, for an executor (never stored)."""
    job = Job(id=notice.job_id, name=f"notice {notice.id}", type=type_, payload=payload, schedule=None,
              timezone="UTC", retry=RetryPolicy(), timeout=None, overlap=OverlapPolicy.ALLOW,
              misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=0.0, status=JobStatus.ACTIVE,
              created_at=_EPOCH, updated_at=_EPOCH)
    run = Run(id=notice.run_id or notice.id, job_id=notice.job_id, scheduled_for=notice.created_at,
              trigger=Trigger.MANUAL, attempt=notice.attempts + 1, status=RunStatus.RUNNING,
              created_at=notice.created_at, due_at=notice.created_at)
    return job, run


async def _no_log(line: str, stream: str = "stdout") -> None:
    return None


def _masked(text: str | None, secrets: list[str]) -> str | None:
    if text is None:
        return None
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, "***")
    return text[:2000]


async def _attempt(executor: Executor, job: Job, run: Run, secrets: list[str]) -> Delivery:
    try:
        result: ExecutionResult = await executor.execute(job, run, _no_log)
    except ExecutionFailed as exc:
        return Delivery(ok=False, error=_masked(str(exc), secrets), retryable=exc.retryable)
    if result.ok:
        return Delivery(ok=True, code=result.exit_code,
                        result=None if result.exit_code is None else f"HTTP {result.exit_code}")
    return Delivery(ok=False, code=result.exit_code, error=_masked(result.error, secrets),
                    retryable=result.retryable)


class WebhookNotifier(NotifyChannel):
    channel: ClassVar[str] = "webhook"

    def __init__(self, http: Executor) -> None:
        self.http = http  # an HttpExecutor (its guard and client)

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.http.stop()

    async def deliver(self, notice: Notice) -> Delivery:
        hook = WebhookChannel.model_validate(notice.target["webhook"])
        body = webhook_body(notice.data, hook.format)
        headers = dict(hook.headers)
        headers.update({"Content-Type": "application/json", "X-Chronos-Event": notice.event,
                        "X-Chronos-Delivery": notice.id, "Idempotency-Key": f"chronos-notice:{notice.id}"})
        if hook.secret:
            headers["X-Chronos-Signature"] = sign(hook.secret, body)
        payload = HttpPayload.model_validate({"method": "POST", "url": hook.url, "headers": headers,
                                              "body": body.decode()})
        path = hook.url.split("://", 1)[-1].partition("/")[2]  # a webhook's path is its credential
        secrets = [*payload.secrets(), *text_secrets(hook.url), hook.secret or "", hook.url,
                   *([path] if len(path) >= 8 else []), *hook.headers.values()]
        job, run = _carrier(notice, "http", payload.model_dump(mode="json", by_alias=True))
        return await _attempt(self.http, job, run, secrets)


class EmailNotifier(NotifyChannel):
    channel: ClassVar[str] = "email"

    def __init__(self, email: Executor) -> None:
        self.email = email  # an EmailExecutor (its SMTP settings)

    async def start(self) -> None:
        await self.email.start()

    async def stop(self) -> None:
        await self.email.stop()

    async def deliver(self, notice: Notice) -> Delivery:
        target = EmailChannel.model_validate(notice.target["email"])
        subject = message_subject(notice.data)
        if header_problem("subject", subject):  # a job named =?utf-8?q?x=0D=0ABcc:...?= : shown as is
            subject = subject.replace("=?", "= ?")
        payload = EmailPayload.model_validate({"to": target.to, "subject": subject,
                                               "text": message_text(notice.data)})
        job, run = _carrier(notice, "email", payload.model_dump(mode="json", by_alias=True))
        outcome = await _attempt(self.email, job, run, [])
        if outcome.ok:
            outcome.result = f"sent to {', '.join(target.to)}"
            outcome.code = None
        return outcome


def notify_channels(config: object | None = None) -> list[NotifyChannel]:
    """The webhook and email channels, configured like the built-in executors (an ``ExecutorConfig``:
    the HTTP allow-list and timeout, the SMTP settings)."""
    from chronos_adapters.executors import EmailExecutor, ExecutorConfig, HttpExecutor

    c = config if isinstance(config, ExecutorConfig) else ExecutorConfig()
    http = HttpExecutor(allow_hosts=c.http_allow_hosts, timeout=min(c.http_timeout, 30.0),
                        max_body=4096, max_redirects=0)
    email = EmailExecutor(host=c.smtp_host, port=c.smtp_port, user=c.smtp_user, password=c.smtp_password,
                          starttls=c.smtp_starttls, ssl=c.smtp_ssl, sender=c.smtp_sender,
                          timeout=c.smtp_timeout, ca_file=c.smtp_ca_file,
                          max_recipients=c.smtp_max_recipients)
    return [WebhookNotifier(http), EmailNotifier(email)]
