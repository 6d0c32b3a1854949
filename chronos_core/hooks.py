"""What happens around a job's runs: notifications, chained jobs and auto-pause (the job fields
``notify``, ``then``, ``pause_after_failures``, ``alert_after``, ``exclude``), as validated models and
pure rules.

Each outcome that triggers something becomes a :class:`Notice`, a durable record the store writes in the
same transaction as the outcome itself (the outbox pattern): ``finish_run`` is given the job's
:class:`OutcomeHooks` and inserts what :func:`outcome_notices` says. The :class:`~chronos_core.notifier.
Notifier` engine then delivers each notice at least once, with backoff, and records every attempt on it;
a notice's ``key`` is unique (run, event, rule), so an outcome written twice never notifies twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from .errors import FieldError, InvalidJob
from .hookspec import ChainRule, EmailChannel, Exclusion, NotifyEvent, NotifyRule, WebhookChannel
from .ids import new_id
from .models import FAILED_RUN_STATUSES, JobSummary, RunStatus
from .secrets import REDACTED, redact_text, restore_text

__all__ = [
    "ChainRule",
    "EmailChannel",
    "Exclusion",
    "Notice",
    "NoticeKind",
    "NoticeStatus",
    "NotifyEvent",
    "NotifyRule",
    "OutcomeHooks",
    "WebhookChannel",
    "backoff",
    "outcome_notices",
    "shown_webhook_url",
    "sign",
]


class NoticeKind(StrEnum):
    NOTIFY = "notify"  # deliver a message on a channel
    CHAIN = "chain"  # run another job
    PAUSE = "pause"  # pause the job (pause_after_failures)


class NoticeStatus(StrEnum):
    PENDING = "pending"  # waiting for its (next) delivery attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the last attempt


@dataclass(slots=True, kw_only=True)
class Notice:
    """One durable thing to do because of an outcome: a message to send, a job to chain, a pause.

    ``key`` is unique among notices: ``<run id>:<event>:<rule>`` (the same outcome recorded twice adds
    nothing). ``target`` is the rule's channel (``{"webhook": {...}}`` / ``{"email": {...}}``), the chained
    job's name (``{"job": name}``) or the pause's reason. ``data`` is what the message says (job, run,
    status, attempt, error, output tail). Delivery state: ``status``, ``attempts``, ``due_at`` (next
    attempt), ``owner``/``lease_until`` while a notifier holds it, ``last_error``/``last_code`` of the last
    attempt, ``result`` (the chained run's id, the delivery's response code...)."""

    id: str
    key: str
    kind: NoticeKind
    event: str
    job_id: str
    run_id: str | None
    target: dict[str, Any]
    data: dict[str, Any]
    created_at: datetime
    due_at: datetime
    status: NoticeStatus = NoticeStatus.PENDING
    attempts: int = 0
    owner: str | None = None
    lease_until: datetime | None = None
    last_error: str | None = None
    last_code: int | None = None
    finished_at: datetime | None = None
    result: str | None = None
    tries: list[dict[str, Any]] = field(default_factory=list)  # each attempt: {at, ok, code, error}


@dataclass(frozen=True, slots=True)
class OutcomeHooks:
    """A job's hooks as ``finish_run`` needs them to write the outcome's notices in its transaction."""

    job_name: str
    notify: tuple[NotifyRule, ...] = ()
    then: tuple[ChainRule, ...] = ()
    pause_after_failures: int | None = None

    @staticmethod
    def of(job: Any, default_notify: Sequence[NotifyRule] = ()) -> OutcomeHooks | None:
        """The hooks of a job (its ``notify``, or ``default_notify`` when it has none), None when it has
        none at all (the store then writes nothing more than the outcome)."""
        notify = tuple(job.notify or default_notify)
        then = tuple(job.then or ())
        if not notify and not then and job.pause_after_failures is None:
            return None
        return OutcomeHooks(job.name, notify, then, job.pause_after_failures)

    def wants(self, event: NotifyEvent) -> bool:
        return any(event in rule.on for rule in self.notify)

    def for_outcome(self, status: RunStatus, final: bool) -> OutcomeHooks | None:
        """These hooks if an outcome so could set any of them off, else None: a finish given none takes
        the store's fast path (a default list wanting only failures costs successes nothing)."""
        if status is RunStatus.SUCCEEDED:
            hit = self.wants(NotifyEvent.SUCCEEDED) or self.wants(NotifyEvent.RECOVERED)
        elif status in FAILED_RUN_STATUSES:
            hit = final and (self.wants(NotifyEvent(status.value)) or self.pause_after_failures is not None)
        else:
            hit = False
        if not hit and (final or status is RunStatus.SUCCEEDED):
            hit = any(status.value in c.on for c in self.then)
        return self if hit else None


def outcome_hooks(job: Any, default_notify: Sequence[NotifyRule], status: RunStatus,
                  final: bool) -> OutcomeHooks | None:
    """What ``finish_run`` is given for this outcome of the job (None: nothing to set off)."""
    hooks = OutcomeHooks.of(job, default_notify)
    return None if hooks is None else hooks.for_outcome(status, final)


def _events_for(status: RunStatus, final: bool, failures_before: int) -> list[NotifyEvent]:
    if status is RunStatus.SUCCEEDED:
        return [NotifyEvent.SUCCEEDED] + ([NotifyEvent.RECOVERED] if failures_before > 0 else [])
    if status in FAILED_RUN_STATUSES and final:
        return [NotifyEvent(status.value)]
    return []


def message_data(job_id: str, job_name: str, run: dict[str, Any], event: str) -> dict[str, Any]:
    """The documented body of a notification (webhook ``format: json``; the email's text says the
    same): event, job {id, name}, run {id, status, attempt, trigger, scheduled_for, started_at,
    finished_at, exit_code, error, output_tail}, links {run, job} (paths of the REST API)."""
    run_id = run.get("id")
    return {
        "event": event,
        "job": {"id": job_id, "name": job_name},
        "run": run,
        "links": {"job": f"/jobs/{job_id}", **({"run": f"/runs/{run_id}"} if run_id else {})},
    }


OUTPUT_TAIL = 2000  # characters of output a message carries


def run_facts(run_id: str, status: RunStatus, attempt: int, trigger: str, scheduled_for: datetime,
              started_at: datetime | None, finished_at: datetime | None, exit_code: int | None,
              error: str | None, output: str) -> dict[str, Any]:
    return {
        "id": run_id, "status": status.value, "attempt": attempt, "trigger": trigger,
        "scheduled_for": scheduled_for.isoformat(),
        "started_at": None if started_at is None else started_at.isoformat(),
        "finished_at": None if finished_at is None else finished_at.isoformat(),
        "exit_code": exit_code, "error": None if error is None else error[:2000],
        "output_tail": output[-OUTPUT_TAIL:],
    }


def outcome_notices(hooks: OutcomeHooks, *, job_id: str, run: dict[str, Any], status: RunStatus,
                    final: bool, before: JobSummary, after: JobSummary, now: datetime,
                    new_id: Any) -> list[Notice]:
    """The notices one recorded outcome adds (pure: the stores call it inside the outcome's transaction).

    ``run`` is :func:`run_facts`; ``final`` says no retry follows (the slot's outcome); ``before`` and
    ``after`` are the job's summary around this outcome (``recovered``: failed slots before, a success
    now; ``pause_after_failures``: the failed-slot count reaching N)."""
    out: list[Notice] = []
    run_id = run["id"]
    for event in _events_for(status, final, before.consecutive_failed_slots):
        for i, rule in enumerate(hooks.notify):
            if event in rule.on:
                out.append(_notify(f"{run_id}:{event.value}:{i}", event.value, rule, job_id, hooks.job_name,
                                   run, now, new_id))
    if final or status is RunStatus.SUCCEEDED:
        for i, chain in enumerate(hooks.then):
            if status.value in chain.on:
                out.append(Notice(id=new_id(), key=f"{run_id}:chain:{i}", kind=NoticeKind.CHAIN,
                                  event=status.value, job_id=job_id, run_id=run_id,
                                  target={"job": chain.job}, data={"parent": run}, created_at=now,
                                  due_at=now))
    n = hooks.pause_after_failures
    if (n is not None and final and status in FAILED_RUN_STATUSES
            and after.consecutive_failed_slots >= n > before.consecutive_failed_slots):
        reason = (f"paused after {after.consecutive_failed_slots} failed runs in a row "
                  f"(pause_after_failures: {n}); the last: run {run_id} {status.value}")
        out.append(Notice(id=new_id(), key=f"{run_id}:pause", kind=NoticeKind.PAUSE, event="paused",
                          job_id=job_id, run_id=run_id, target={"reason": reason}, data={"run": run},
                          created_at=now, due_at=now))
    return out


def _notify(key: str, event: str, rule: NotifyRule, job_id: str, job_name: str, run: dict[str, Any],
            now: datetime, new_id: Any) -> Notice:
    target = ({"webhook": rule.webhook.model_dump(mode="json")} if rule.webhook is not None
              else {"email": rule.email.model_dump(mode="json") if rule.email else {}})
    return Notice(id=new_id(), key=key, kind=NoticeKind.NOTIFY, event=event, job_id=job_id,
                  run_id=run.get("id"), target=target, data=message_data(job_id, job_name, run, event),
                  created_at=now, due_at=now)


def notify_notices(rules: Sequence[NotifyRule], event: NotifyEvent, *, key: str, job_id: str,
                   job_name: str, run: dict[str, Any], now: datetime, new_id: Any) -> list[Notice]:
    """The notices of ``event`` for the rules that want it (``key``: unique per occurrence)."""
    return [_notify(f"{key}:{event.value}:{i}", event.value, rule, job_id, job_name, run, now, new_id)
            for i, rule in enumerate(rules) if event in rule.on]


MAX_RECORD_NOTICES = 20
"""Notifications of missed/skipped slots per claimed job and event (an outage of a per-second job
records thousands of slots: the latest ones are told)."""


def record_notices(rules: Sequence[NotifyRule], job_id: str, job_name: str, runs: Sequence[Any],
                   now: datetime) -> list[Notice]:
    """The ``missed``/``skipped`` notifications of the records a claim makes (the runs of a plan)."""
    out: list[Notice] = []
    for event, status in ((NotifyEvent.MISSED, RunStatus.MISSED), (NotifyEvent.SKIPPED, RunStatus.SKIPPED)):
        if not any(event in r.on for r in rules):
            continue
        records = [r for r in runs if r.status is status][-MAX_RECORD_NOTICES:]
        for r in records:
            facts = run_facts(r.id, r.status, r.attempt, r.trigger.value, r.scheduled_for, None,
                              r.finished_at, None, r.error, "")
            out += notify_notices(rules, event, key=r.id, job_id=job_id, job_name=job_name, run=facts,
                                  now=now, new_id=new_id)
    return out


def sign(secret: str, body: bytes) -> str:
    """The ``X-Chronos-Signature`` header value: ``sha256=`` + the hex HMAC-SHA256 of the body with the
    rule's secret (as GitHub's ``X-Hub-Signature-256``)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(data: dict[str, Any], fmt: str) -> bytes:
    """The POSTed body: the message as JSON, or for ``format: slack`` a Slack-compatible ``{"text"}``."""
    if fmt == "slack":
        return json.dumps({"text": message_text(data)}, ensure_ascii=False).encode()
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def message_subject(data: dict[str, Any]) -> str:
    job = data.get("job", {}).get("name", "?")
    return f"[chronos] {job}: {data.get('event', '?')}"


def message_text(data: dict[str, Any]) -> str:
    """The message as text (Slack's ``text``, the email's body)."""
    run = data.get("run") or {}
    lines = [message_subject(data)]
    if run.get("id"):
        lines.append(f"run {run['id']} {run.get('status', '')} (attempt {run.get('attempt', 1)}, "
                     f"slot {run.get('scheduled_for', '')})")
    if data.get("reason"):
        lines.append(str(data["reason"]))
    if run.get("error"):
        lines.append(f"error: {run['error']}")
    if run.get("output_tail"):
        lines.append("output (last lines):\n" + "\n".join(str(run["output_tail"]).splitlines()[-20:]))
    return "\n".join(lines)


BACKOFF = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
"""Seconds before each further delivery attempt; after the last a notice is ``failed`` (about 2 hours
of trying in all)."""
MAX_ATTEMPTS = len(BACKOFF) + 1
NOTICE_RETENTION = timedelta(days=7)
"""Delivered and failed notices are kept this long after their last attempt (``Store.prune_runs``)."""


def backoff(attempts: int) -> timedelta | None:
    """The wait before the next attempt after ``attempts`` failed ones; None: give up."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return timedelta(seconds=BACKOFF[attempts - 1])


@dataclass(slots=True)
class Delivery:
    """How one delivery attempt went."""

    ok: bool
    code: int | None = None
    error: str | None = None
    retryable: bool = True
    result: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def shown_webhook_url(url: str) -> str:
    """A webhook URL as shown to users: its origin, and ``/***`` for any path or query - an incoming
    webhook's path is its credential (``https://hooks.slack.com/services/T…/B…/<secret>``: whoever reads
    it can post to the channel)."""
    parts = urlsplit(url)
    if parts.path in ("", "/") and not parts.query:
        return redact_text(url)
    return redact_text(f"{parts.scheme}://{parts.netloc}") + "/" + REDACTED


def redact_notify(rules: Sequence[NotifyRule]) -> list[dict[str, Any]]:
    """The rules as shown to users: a webhook's ``secret`` and every header value as ``***`` (a header
    may carry a token whatever its name), its URL's path and query too (:func:`shown_webhook_url`)."""
    out = []
    for rule in rules:
        data = rule.model_dump(mode="json", by_alias=True, exclude_none=True)
        hook = data.get("webhook")
        if hook is not None:
            hook["url"] = shown_webhook_url(hook["url"])
            hook["headers"] = {k: REDACTED for k in hook.get("headers", {})}
            if hook.get("secret"):
                hook["secret"] = REDACTED
        out.append(data)
    return out


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower() + f":{parts.port or ''}"


def restore_notify(new: Sequence[NotifyRule], old: Sequence[NotifyRule]) -> list[NotifyRule]:
    """``new`` (rules written back after a read) with each ``***`` put back from the rule at the same
    position of ``old`` - unless the webhook's URL now points at another origin: then
    :class:`InvalidJob` names each such value, which must be sent again (a secret goes only where it
    was meant to)."""
    out: list[NotifyRule] = []
    errors: list[FieldError] = []
    for i, rule in enumerate(new):
        prev = old[i].webhook if i < len(old) else None
        hook = rule.webhook
        if hook is None:
            out.append(rule)
            continue
        masked = [k for k, v in hook.headers.items() if v == REDACTED]
        secret_masked = hook.secret == REDACTED
        url = hook.url
        if prev is not None and url == shown_webhook_url(prev.url):  # the URL written back as shown
            url = prev.url
        elif REDACTED in url and prev is not None:
            url = restore_text(url, prev.url) or url
        if not masked and not secret_masked and url == hook.url:
            out.append(rule)
            continue
        if prev is None or _origin(url) != _origin(prev.url):
            where: list[tuple[str | int, ...]] = [("notify", i, "webhook", "headers", k) for k in masked]
            if secret_masked:
                where.append(("notify", i, "webhook", "secret"))
            errors += [FieldError(loc, "the webhook's url changed (or is new), so the stored secret shown as "
                                       f"{REDACTED} is not reused: send its value again") for loc in where]
            out.append(rule)
            continue
        headers = {k: (prev.headers.get(k, v) if v == REDACTED else v) for k, v in hook.headers.items()}
        secret = prev.secret if secret_masked else hook.secret
        out.append(rule.model_copy(update={"webhook": hook.model_copy(
            update={"url": url, "headers": headers, "secret": secret})}))
    if errors:
        raise InvalidJob(errors)
    return out
