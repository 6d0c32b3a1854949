"""The validated shape of the job fields ``notify``, ``then`` and ``exclude`` (the rules that act on
them are in :mod:`chronos_core.hooks`), and of a job's times (``DateTimeInput``). Imported by ``models``
for ``JobSpec``: imports no domain model."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .payloads import http_url, parse_address

__all__ = ["HEADER_NAME_MAX", "HEADER_VALUE_MAX", "NOTIFY_MAX_BYTES", "ChainRule", "DateTimeInput",
           "EmailChannel", "Exclusion", "NotifyEvent", "NotifyRule", "WebhookChannel", "notify_json",
           "notify_problems"]

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EXAMPLE = "2027-01-01T09:00:00Z"


def _not_a_number(value: Any) -> Any:
    """pydantic alone takes a number for a datetime as Unix seconds (``1700000000``, ``0.5``), and a
    string that is one too (``"1700000000"``, ``"0.0"``). A job's times are date-times (ISO 8601; the
    OpenAPI document says ``format: date-time``) and a number there is more likely a mistake (seconds or
    milliseconds? a count of days?) than a time: refused, as the API's query parameters refuse it. Text
    must start with a calendar date (``YYYY-MM-DD``), which no number does; pydantic reads the rest."""
    if isinstance(value, int | float | Decimal):  # bool is an int: refused too
        raise ValueError(f"expected a date-time (ISO 8601 text such as {_EXAMPLE}), not a number")
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else value
    if isinstance(text, str) and not _DATE.match(text):
        raise ValueError(f"expected a date-time: ISO 8601 text such as {_EXAMPLE}")
    return value


DateTimeInput = Annotated[datetime, BeforeValidator(_not_a_number)]
"""A ``datetime`` as a job's fields take it: a ``datetime``, or ISO 8601 text; never a number."""


class NotifyEvent(StrEnum):
    FAILED = "failed"  # the slot's final outcome: no retry left (one per slot, not per attempt)
    TIMED_OUT = "timed_out"  # likewise
    SUCCEEDED = "succeeded"
    RECOVERED = "recovered"  # the first success after failed slots
    MISSED = "missed"
    SKIPPED = "skipped"
    RUNNING_LONG = "running_long"  # still running after alert_after seconds
    PAUSED = "paused"  # auto-paused by pause_after_failures


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
HEADER_NAME_MAX = 256
"""Characters in a webhook header's name, on input (:func:`notify_problems`)."""
HEADER_VALUE_MAX = 8192
"""Characters in a webhook header's value, on input (servers refuse longer header lines: 8 KiB is
usual). Stored rules are not held to it (:func:`notify_problems`)."""
NOTIFY_MAX_BYTES = 60_000
"""Bytes of a job's notification rules as stored (:func:`notify_json`, UTF-8). The rule for every store:
MySQL keeps them in a ``TEXT`` column (65,535 bytes), and 20 rules within their fields' bounds could be
more than that (review-secattack F2: a 500 on MySQL for a job SQLite stored)."""


def notify_json(rules: list[NotifyRule]) -> bytes:
    """The rules as a store writes them: compact JSON, by alias, without nulls, UTF-8."""
    return json.dumps([r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in rules],
                      separators=(",", ":"), ensure_ascii=False).encode()


def notify_problems(rules: Sequence[NotifyRule]) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with ``rules`` as a job's new notification rules, as ``(loc, reason)`` within the
    job (empty: nothing): a webhook header's name over HEADER_NAME_MAX or value over HEADER_VALUE_MAX
    characters, the whole over NOTIFY_MAX_BYTES as stored. The bounds for every store and every write
    (POST, PUT, PATCH, apply, ``serve --jobs``), measured on the rules as they will be stored (after any
    ``***`` is restored: review-secfix F1). Never applied when rules are read back: a job stored before
    a bound existed stays readable and runs; a write must bring it within them."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, rule in enumerate(rules):
        hook = rule.webhook
        if hook is None:
            continue
        for name, value in hook.headers.items():
            if len(name) > HEADER_NAME_MAX or len(value) > HEADER_VALUE_MAX:
                problems.append((("notify", i, "webhook", "headers"), (
                    f"header {name[:100]!r} is {len(name)} characters with a value of {len(value)}: at "
                    f"most {HEADER_NAME_MAX} in a name and {HEADER_VALUE_MAX} in a value")))
    size = len(notify_json(list(rules))) if rules else 0
    if size > NOTIFY_MAX_BYTES:
        problems.append((("notify",), f"the notification rules are {size} bytes of JSON as stored; at "
                                      f"most {NOTIFY_MAX_BYTES}"))
    return problems


class WebhookChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    format: Literal["json", "slack"] = "json"
    secret: str | None = Field(default=None, min_length=1, max_length=1024,
                               description="signs the body: X-Chronos-Signature: sha256=<HMAC-SHA256>")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"not a header name: {name[:100]!r}")
            if any(c in value for c in "\r\n\x00"):
                raise ValueError(f"header {name!r}: CR, LF and NUL are not allowed in a value")
        # The lengths (HEADER_NAME_MAX, HEADER_VALUE_MAX) are not checked here: this model also decodes
        # the rules a store holds and a notice's target, and a job stored before those bounds existed
        # must stay readable, runnable and editable (review-secfix F3). They bound input only:
        # notify_problems, which JobSpec and Jobs.update apply.
        return v


class EmailChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: list[str] = Field(min_length=1, max_length=50)

    @field_validator("to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        bad = []
        for a in v:
            try:
                parse_address(a)
            except ValueError:
                bad.append(a)
        if bad:
            raise ValueError(f"not an email address: {', '.join(map(repr, bad[:5]))}")
        return v


class NotifyRule(BaseModel):
    """``{"on": [...], "webhook": {...}}`` or ``{"on": [...], "email": {...}}``: one channel per rule."""

    model_config = ConfigDict(extra="forbid")

    on: list[NotifyEvent] = Field(min_length=1, max_length=len(NotifyEvent))
    webhook: WebhookChannel | None = None
    email: EmailChannel | None = None

    @model_validator(mode="after")
    def _one_channel(self) -> NotifyRule:
        if (self.webhook is None) == (self.email is None):
            raise ValueError("give exactly one channel: webhook or email")
        return self


_CHAIN_ON = Literal["succeeded", "failed", "timed_out", "cancelled"]


class ChainRule(BaseModel):
    """``{"on": ["succeeded"], "job": "load-warehouse"}``: when a run ends so (its final attempt, for a
    failure), the named job runs once with trigger ``chain``. ``job`` is stripped of blanks at its ends,
    as ``JobSpec.name`` is: no job's name has them, so ``"load-warehouse "`` means that job."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    on: list[_CHAIN_ON] = Field(default_factory=lambda: list[_CHAIN_ON](["succeeded"]), min_length=1,
                                max_length=4)
    job: str = Field(min_length=1, max_length=200)


class Exclusion(BaseModel):
    """A blackout: a time range in the job's zone (``from``/``to``; a time without an offset is in the
    job's zone) or a cron window (``cron``: every slot matching it is excluded, e.g. ``* * * * sat,sun``).
    Slots inside are recorded ``skipped`` with reason ``excluded`` instead of running."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: DateTimeInput | None = Field(default=None, alias="from")
    to: DateTimeInput | None = None
    cron: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _shape(self) -> Exclusion:
        if self.cron is not None:
            if self.from_ is not None or self.to is not None:
                raise ValueError("give either cron or from/to, not both")
        elif self.from_ is None or self.to is None:
            raise ValueError("give from and to (a time range) or cron (a cron window)")
        elif (self.from_.tzinfo is None) != (self.to.tzinfo is None):
            raise ValueError("from and to must both have a UTC offset or both have none")
        elif self.to <= self.from_:
            raise ValueError("to must be after from")
        return self
