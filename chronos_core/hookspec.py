"""The validated shape of the job fields ``notify``, ``then`` and ``exclude`` (the rules that act on
them are in :mod:`chronos_core.hooks`). Imported by ``models`` for ``JobSpec``: imports no domain model."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .payloads import http_url, parse_address

__all__ = ["ChainRule", "EmailChannel", "Exclusion", "NotifyEvent", "NotifyRule", "WebhookChannel"]


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

    from_: datetime | None = Field(default=None, alias="from")
    to: datetime | None = None
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
