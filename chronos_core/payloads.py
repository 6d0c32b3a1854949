"""Job types: each names a payload model that validates what a job of that type carries.

The four built-in types are ``shell``, ``http``, ``email`` and ``sql``. A user adds a type by registering
its payload model here (and an executor for it in the worker, see ``chronos_core.ports.Executor``);
nothing else in the core changes. A payload model may list ``secret_fields`` / implement ``redact`` so
that secrets are masked whenever the job is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import FieldError, InvalidJob, UnknownJobType

__all__ = [
    "REDACTED",
    "EmailPayload",
    "HttpPayload",
    "JobTypes",
    "Payload",
    "ShellPayload",
    "SqlPayload",
    "field_errors",
]

REDACTED = "***"
_SECRET_NAME = re.compile(r"(pass(word|wd)?|secret|token|api[-_]?key|auth|credential|cookie|session)", re.I)


def is_secret_name(name: str) -> bool:
    """Whether a header/variable name suggests its value is a secret (``Authorization``, ``DB_PASSWORD``)."""
    return bool(_SECRET_NAME.search(name))


class Payload(BaseModel):
    """Base class of payload models: unknown fields are rejected so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")

    def redacted(self) -> dict[str, Any]:
        """The payload as shown to users and written to logs, with secrets masked."""
        return self.model_dump(mode="json")

    def secrets(self) -> list[str]:
        """Secret values that must be masked wherever they would appear in output or logs."""
        return []


def _mask_mapping(values: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_name(k) and v else v) for k, v in values.items()}


class ShellPayload(Payload):
    """``command`` runs through ``/bin/sh -c``; ``argv`` runs a program directly (no shell)."""

    command: str | None = Field(default=None, min_length=1, max_length=100_000)
    argv: list[str] | None = Field(default=None, min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ShellPayload:
        if (self.command is None) == (self.argv is None):
            raise ValueError("give exactly one of 'command' or 'argv'")
        return self

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["env"] = _mask_mapping(self.env)
        return data

    def secrets(self) -> list[str]:
        return [v for k, v in self.env.items() if is_secret_name(k) and v]


class HttpPayload(Payload):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(min_length=1, max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str | list[str]] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    expected_status: list[int] = Field(default_factory=list, description="empty means any 2xx")
    expect_body: str | None = Field(default=None, description="a regular expression the body must match")
    follow_redirects: bool = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+", v, re.I):
            raise ValueError("must be an absolute http:// or https:// URL")
        return v

    @field_validator("expected_status")
    @classmethod
    def _statuses(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 100 <= s <= 599]
        if bad:
            raise ValueError(f"HTTP status codes are 100-599, got {bad}")
        return v

    @field_validator("expect_body")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_body(self) -> HttpPayload:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give at most one of 'json' or 'body'")
        return self

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True)
        data["headers"] = _mask_mapping(self.headers)
        data["query"] = {k: (REDACTED if is_secret_name(k) and v else v) for k, v in self.query.items()}
        password = _url_password(self.url)
        if password:
            data["url"] = self.url.replace(f":{password}@", f":{REDACTED}@", 1)
        return data

    def secrets(self) -> list[str]:
        out = []
        for k, v in self.headers.items():
            if is_secret_name(k) and v:
                out.append(v)
                scheme, _, token = v.partition(" ")
                if token and scheme.lower() in ("bearer", "basic", "token"):
                    out.append(token)
        for k, q in self.query.items():
            if is_secret_name(k):
                out.extend(x for x in ([q] if isinstance(q, str) else q) if x)
        password = _url_password(self.url)
        if password:
            out.append(password)
        return out


def _url_password(url: str) -> str | None:
    """The password in ``scheme://user:password@host/...``, if any."""
    m = re.match(r"^[a-z][a-z0-9+.-]*://[^/?#@]*?:([^/?#@]+)@", url, re.I)
    return m.group(1) if m else None


_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$|^.*<[^@\s<>]+@[^@\s<>]+>$")


class EmailPayload(Payload):
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    sender: str | None = Field(default=None, description="From address; default from settings")
    subject: str = Field(default="", max_length=998)
    text: str | None = None
    html: str | None = None

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if not _ADDRESS.match(a.strip())]
        if bad:
            raise ValueError(f"not an email address: {', '.join(map(repr, bad))}")
        return [a.strip() for a in v]

    @model_validator(mode="after")
    def _complete(self) -> EmailPayload:
        if not (self.to or self.cc or self.bcc):
            raise ValueError("give at least one recipient in 'to', 'cc' or 'bcc'")
        if self.text is None and self.html is None:
            raise ValueError("give 'text' and/or 'html'")
        return self


class SqlPayload(Payload):
    """``connection`` names a connection defined in settings; the job never carries a DSN or password."""

    connection: str = Field(min_length=1, max_length=100)
    statement: str = Field(min_length=1, max_length=100_000)
    params: dict[str, Any] = Field(default_factory=dict)
    max_rows: int = Field(default=20, ge=0, le=10_000)

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["params"] = {k: (REDACTED if is_secret_name(k) and v else v) for k, v in self.params.items()}
        return data

    def secrets(self) -> list[str]:
        return [str(v) for k, v in self.params.items() if is_secret_name(k) and v not in (None, "")]


class JobTypes:
    """The registry of job types: type name -> payload model."""

    BUILTIN: ClassVar[dict[str, type[Payload]]] = {
        "shell": ShellPayload,
        "http": HttpPayload,
        "email": EmailPayload,
        "sql": SqlPayload,
    }

    def __init__(self, types: dict[str, type[Payload]] | None = None) -> None:
        self._types: dict[str, type[Payload]] = dict(self.BUILTIN if types is None else types)

    def register(self, name: str, payload_model: type[Payload]) -> None:
        """Add (or replace) a job type."""
        if not re.fullmatch(r"[a-z][a-z0-9_.-]{0,49}", name):
            raise ValueError(f"job type names are lowercase identifiers, got {name!r}")
        self._types[name] = payload_model

    @property
    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def model(self, name: str) -> type[Payload]:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobType(name, list(self._types)) from None

    def parse(self, name: str, payload: dict[str, Any]) -> Payload:
        """The payload as its model; ``InvalidJob`` with one entry per bad field (under ``payload``)."""
        try:
            return self.model(name).model_validate(payload)
        except ValidationError as exc:
            raise InvalidJob(field_errors(exc, prefix=("payload",))) from None

    def validate(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload, validated and normalised to plain JSON data."""
        return self.parse(name, payload).model_dump(mode="json", by_alias=True, exclude_none=True)

    def redact(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload with secrets masked (unknown types are masked by key name alone)."""
        model = self._types.get(name)
        if model is not None:
            try:
                return model.model_validate(payload).redacted()
            except ValidationError:
                pass
        return {k: (REDACTED if is_secret_name(k) else v) for k, v in payload.items()}

    def secrets(self, name: str, payload: dict[str, Any]) -> list[str]:
        model = self._types.get(name)
        if model is None or model.secrets is Payload.secrets:  # a type that never has secrets
            return []
        try:
            return model.model_validate(payload).secrets()
        except ValidationError:
            return []


def field_errors(exc: ValidationError, prefix: Iterable[str | int] = ()) -> list[FieldError]:
    """One ``FieldError`` per pydantic error, with its location (model-level errors point at the model)."""
    pre = tuple(prefix)
    out = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append(FieldError(pre + tuple(err["loc"]), msg))
    return out
