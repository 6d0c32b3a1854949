"""Job types: each names a payload model that validates what a job of that type carries.

The four built-in types are ``shell``, ``http``, ``email`` and ``sql``. A user adds a type by registering
its payload model here (and an executor for it in the worker, see ``chronos_core.ports.Executor``);
nothing else in the core changes. A payload model may list ``secret_fields`` / implement ``redact`` so
that secrets are masked whenever the job is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from email.headerregistry import HeaderRegistry
from email.utils import getaddresses
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import FieldError, InvalidJob, UnknownJobType
from .secrets import (
    MAX_SECRETS,
    MIN_SECRET_LENGTH,
    REDACTED,
    Loc,
    form_secrets,
    is_secret_name,
    redact_named,
    redact_query,
    redact_text,
    restore_text,
    text_secrets,
    walk_named,
)

__all__ = [
    "REDACTED",
    "EmailPayload",
    "HttpPayload",
    "JobTypes",
    "Payload",
    "PythonPayload",
    "ShellPayload",
    "SqlPayload",
    "field_errors",
    "header_problem",
    "is_secret_name",
    "parse_address",
    "restore_masked",
]


class Payload(BaseModel):
    """Base class of payload models: unknown fields are rejected so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")

    def redacted(self) -> dict[str, Any]:
        """The payload as shown to users and written to logs, with secrets masked."""
        return self.model_dump(mode="json")

    def secrets(self) -> list[str]:
        """Secret values that must be masked wherever they would appear in output or logs."""
        return []

    def secret_items(self) -> list[tuple[Loc, str]]:
        """(location in the payload, value) of each secret; a job whose secrets are too short to be
        masked is refused at that location."""
        return [((), s) for s in self.secrets()]

    def secret_binding(self) -> dict[str, Any]:
        """What the stored secrets are bound to: a PUT that changes one of these must send the secrets
        again rather than reuse the stored ones through ``***`` (e.g. an HTTP job's origin). Empty: the
        secrets may follow any change."""
        return {}


class _ItemSecrets(Payload):
    """Payload models that locate their secrets (``secret_items``); ``secrets`` is their values."""

    def secrets(self) -> list[str]:
        return list(dict.fromkeys(v for _, v in self.secret_items()))


def _mask_mapping(values: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_name(k) and v else redact_text(v)) for k, v in values.items()}


def _mapping_items(field: str, values: Mapping[str, str]) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    for k, v in values.items():
        if is_secret_name(k) and v:
            out.append(((field, k), v))
        else:
            out += [((field, k), s) for s in text_secrets(v)]
    return out


class ShellPayload(_ItemSecrets):
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

    def secret_items(self) -> list[tuple[Loc, str]]:
        return _mapping_items("env", self.env)

    def secret_binding(self) -> dict[str, Any]:
        # what runs, where, and with which other variables (PATH, LD_PRELOAD... change what runs)
        return {"command": self.command, "argv": self.argv, "cwd": self.cwd,
                "env": {k: v for k, v in self.env.items() if not is_secret_name(k)}}


def http_url(v: str) -> str:
    """``v`` if it is an absolute http(s) URL (what an HTTP job or a webhook may call), else ValueError."""
    if not re.match(r"^https?://[^/\s?#]+", v, re.I):
        raise ValueError("must be an absolute http:// or https:// URL")
    return v


class HttpPayload(_ItemSecrets):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(min_length=1, max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str | list[str]] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    expected_status: list[int] = Field(default_factory=list, description="empty means any 2xx")
    expect_body: str | None = Field(default=None, max_length=4096, description=(
        "an RE2 regular expression the body must match (linear time: no backreferences or lookaround)"))
    follow_redirects: bool = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)

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
        # Not compiled here: Python's re takes seconds on the event loop for a few kilobytes of wide
        # ranges ([\x00-\U0010ffff] x 200: 4 s); the HTTP executor's check compiles it with RE2 (the
        # engine that runs it), bounded, when the job is made, and refuses what RE2 cannot run.
        if v is not None:
            construct = _backtracking_construct(v)
            if construct:
                raise ValueError(f"{construct} is not supported: patterns are matched with RE2, in time "
                                 "linear in the body (no backreferences, lookaround, conditionals, atomic "
                                 "groups or possessive quantifiers)")
        return v

    @model_validator(mode="after")
    def _one_body(self) -> HttpPayload:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give at most one of 'json' or 'body'")
        return self

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True)
        data["headers"] = _mask_mapping(self.headers)
        data["query"] = {k: (REDACTED if is_secret_name(k) and v else redact_named(v))
                         for k, v in self.query.items()}
        data["url"] = redact_text(self.url)
        if self.json_body is not None:
            data["json"] = redact_named(self.json_body)
        if self.body is not None:
            data["body"] = _redact_body(self.body)
        return data

    def secret_items(self) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        for k, v in self.headers.items():
            if is_secret_name(k) and v:
                out.append((("headers", k), v))
                scheme, _, token = v.partition(" ")
                token = token.strip()
                if token:
                    out.append((("headers", k), token))
                    if scheme.lower() == "basic":
                        out += [(("headers", k), s) for s in _basic_secrets(token)]
            else:
                out += [(("headers", k), s) for s in text_secrets(v)]
        for k, q in self.query.items():
            values = [q] if isinstance(q, str) else q
            if is_secret_name(k):
                out += [(("query", k), x) for x in values if x]
            else:
                out += [(("query", k), s) for x in values for s in text_secrets(x)]
        out += [(("url",), s) for s in text_secrets(self.url)]
        if self.json_body is not None:
            out += [(("json", *loc), v) for loc, v in walk_named(self.json_body)]
        if self.body is not None:
            out += [(("body",), v) for v in _body_secrets(self.body)]
        return out

    def secret_binding(self) -> dict[str, Any]:
        return {"url": _origin(self.url)}


def _origin(url: str) -> tuple[str, str, int | None]:
    """scheme, host, port: where a request goes (the path does not matter to its secrets)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(
        parts.scheme.lower())


def _basic_secrets(token: str) -> list[str]:
    import base64
    import binascii

    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return []
    _, _, password = decoded.partition(":")
    return [s for s in (decoded, password) if s]


def _body_secrets(body: str) -> list[str]:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        found = [v for _, v in form_secrets(body)]
        return found + text_secrets(body)
    return [v for _, v in walk_named(data)]


def _redact_body(body: str) -> str:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        if form_secrets(body):  # name=value&...: the secret-named values, by position
            body = redact_query(body)
        return redact_text(body)
    if not any(True for _ in walk_named(data)):
        return body
    return json.dumps(redact_named(data))


def _backtracking_construct(pattern: str) -> str | None:
    """The first construct of a Python regular expression that RE2 cannot run, if any."""
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if not in_class and ((nxt in "123456789" and nxt) or nxt == "g"):
                return "a backreference"
            if nxt == "Z":
                return "\\Z (use $)"
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1
            if pattern[i:i + 1] == "^":
                i += 1
            if pattern[i:i + 1] == "]":
                i += 1
            continue
        elif c == "(" and pattern[i + 1:i + 2] == "?":
            rest = pattern[i + 2:i + 4]
            if rest[:1] in ("=", "!") or rest in ("<=", "<!"):
                return "lookaround"
            if rest[:2] == "P=":
                return "a backreference"
            if rest[:1] == "(":
                return "a conditional group"
            if rest[:1] == ">":
                return "an atomic group"
        elif c in "*+?}" and pattern[i + 1:i + 2] == "+" and i > 0:
            return "a possessive quantifier"
        i += 1
    return None


# an addr-spec without quoting, comments or control characters: what the envelope gets is exactly what
# the job says
_ADDR_SPEC = re.compile(r"[^\s\x00-\x1f\x7f@<>()\[\]\\,;:\"]+@[^\s\x00-\x1f\x7f@<>()\[\]\\,;:\"]+"
                        r"\.[^\s\x00-\x1f\x7f@<>()\[\]\\,;:\".]+")
_NAME_FORBIDDEN = re.compile(r"[<>@\x00-\x1f\x7f]")
# what ends a line for str.splitlines (the email package refuses them all in a header, at send time)
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f]")
_HEADERS = HeaderRegistry()
DEFAULT_MAX_RECIPIENTS = 100


def header_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be the header ``name`` of an email as written, or None. The email package
    decodes RFC 2047 encoded-words in what it is given: ``=?utf-8?q?hi=0D=0ABcc:_x@evil.example?=`` as
    a Subject became the two header lines ``Subject: hi`` and ``Bcc: x@evil.example`` (and an encoded
    blank line started the body there), so the value is checked raw and as it decodes."""
    try:
        header = _HEADERS(name, value)
    except Exception as exc:  # e.g. "address parts cannot contain CR or LF", from a decoded name
        return f"not a header the email package can write: {exc}"
    decoded = " ".join([str(header), *(a.display_name for a in getattr(header, "addresses", ()))])
    for text, how in ((value, ""), (decoded, " once its =?...?= encoded-words are decoded")):
        if _LINE_BREAKS.search(text):
            return f"a header is one line: no line breaks{how}"
        if _CONTROLS.search(text):
            return f"no control characters{how}"
    return None


MAX_ADDRESS_LENGTH = 320  # an entry: a 254-character address and a short name


def _cut(text: str, limit: int = 100) -> str:
    """``text`` quoted for an error message, at most ``limit`` characters of it."""
    return repr(text[:limit]) + (f" (+{len(text) - limit} characters)" if len(text) > limit else "")


def parse_address(text: str) -> str:
    """One address, ``user@example.com`` or ``Name <user@example.com>`` (a name with commas in
    quotes), normalised; ``ValueError`` for anything else, e.g. a list of addresses in one entry.
    Bounded work: the email package's header parser takes time quadratic in what it reads (a 100 KB
    entry held the event loop for 30 s), so an entry is at most 320 characters, the cheap checks come
    first and the parser reads only a name with RFC 2047 encoded-words in it."""
    value = text.strip()
    if len(value) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"longer than {MAX_ADDRESS_LENGTH} characters")
    if _LINE_BREAKS.search(value) or _CONTROLS.search(value):
        raise ValueError("a header is one line: no line breaks or control characters")
    pairs = getaddresses([value])
    if len(pairs) != 1:
        raise ValueError("one address per entry")
    name, addr = pairs[0]
    if not _ADDR_SPEC.fullmatch(addr) or _NAME_FORBIDDEN.search(name):
        raise ValueError("not a single address")
    if name:
        shown = f'"{name}" <{addr}>' if re.search(r"[^\w .'-]", name) else f"{name} <{addr}>"
    else:
        shown = addr
    if getaddresses([shown]) != [(name, addr)]:
        raise ValueError("not a single address")
    if "=?" in value and (header_problem("to", value) or header_problem("to", shown)):
        raise ValueError("not a single address: a name whose encoded-words decode to a line break or a "
                         "control character")
    return shown


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
        out, bad = [], []
        for a in v:
            try:
                out.append(parse_address(a))
            except ValueError as exc:
                bad.append(f"{_cut(a)} ({exc})")
        if bad:
            raise ValueError(f"not an email address (one per entry): {', '.join(bad[:5])}"
                             + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
        return out

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        problem = header_problem("subject", v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return parse_address(v)
        except ValueError as exc:
            raise ValueError(f"not an email address: {_cut(v)} ({exc})") from None

    @model_validator(mode="after")
    def _bounded(self, info: ValidationInfo) -> EmailPayload:
        limit = (info.context or {}).get("email_max_recipients")
        total = len(self.to) + len(self.cc) + len(self.bcc)
        if limit is not None and total > limit:
            raise ValueError(f"{total} recipients; at most {limit} (the email_max_recipients setting)")
        return self

    @model_validator(mode="after")
    def _complete(self) -> EmailPayload:
        if not (self.to or self.cc or self.bcc):
            raise ValueError("give at least one recipient in 'to', 'cc' or 'bcc'")
        if self.text is None and self.html is None:
            raise ValueError("give 'text' and/or 'html'")
        return self


class SqlPayload(_ItemSecrets):
    """``connection`` names a connection defined in settings; the job never carries a DSN or password."""

    connection: str = Field(min_length=1, max_length=100)
    statement: str = Field(min_length=1, max_length=100_000)
    params: dict[str, Any] = Field(default_factory=dict)
    max_rows: int = Field(default=20, ge=0, le=10_000)

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["params"] = redact_named(data["params"])
        return data

    def secret_items(self) -> list[tuple[Loc, str]]:
        return [(("params", *loc), v) for loc, v in walk_named(self.params)]

    def secret_binding(self) -> dict[str, Any]:
        # the other parameters decide where the statement puts the secrets (WHERE id = :id)
        return {"connection": self.connection, "statement": self.statement,
                "params": {k: v for k, v in self.params.items() if not is_secret_name(k)}}


FUNCTION_REF = (r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                r":[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class PythonPayload(Payload):
    """``function`` is ``"package.module:qualname"`` (a module-level function, or a static/class method
    reached through its class); ``args``/``kwargs`` are JSON. ``isolation``: ``thread`` (the worker's
    thread pool, or its event loop for an ``async def``) or ``process`` (a child process that a timeout or
    cancel kills). Values under secret-looking names in ``kwargs`` are secrets (masked in output)."""

    function: str = Field(min_length=3, max_length=500, pattern=FUNCTION_REF,
                          description="import path: 'package.module:function'")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    isolation: Literal["thread", "process"] = "thread"

    @field_validator("kwargs")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in v if not k.isidentifier()]
        if bad:
            raise ValueError(f"keyword argument names must be identifiers: {bad[:5]}")
        return v

    @property
    def module(self) -> str:
        return self.function.partition(":")[0]

    def redacted(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["kwargs"] = redact_named(data["kwargs"])
        return data

    def secret_items(self) -> list[tuple[Loc, str]]:
        return [(("kwargs", *loc), v) for loc, v in walk_named(self.kwargs)]

    def secrets(self) -> list[str]:
        return list(dict.fromkeys(v for _, v in self.secret_items()))

    def secret_binding(self) -> dict[str, Any]:
        # a secret argument goes to whatever function is named, with whatever other arguments
        return {"function": self.function, "args": self.args,
                "kwargs": {k: v for k, v in self.kwargs.items() if not is_secret_name(k)}}


class JobTypes:
    """The registry of job types: type name -> payload model."""

    BUILTIN: ClassVar[dict[str, type[Payload]]] = {
        "shell": ShellPayload,
        "http": HttpPayload,
        "email": EmailPayload,
        "sql": SqlPayload,
        "python": PythonPayload,
    }

    def __init__(self, types: dict[str, type[Payload]] | None = None, *,
                 email_max_recipients: int = DEFAULT_MAX_RECIPIENTS) -> None:
        self._types: dict[str, type[Payload]] = dict(self.BUILTIN if types is None else types)
        self._version = 0
        self._context: dict[str, Any] = {"email_max_recipients": email_max_recipients}
        self._service_secrets: list[str] = []

    def add_service_secrets(self, values: Iterable[str | None]) -> None:
        """Secrets of the service itself (API tokens, the SMTP password, SQL URLs...): masked in the
        output of every job, whatever its type, since a job may find them (``secrets`` includes them)."""
        for v in values:
            if v and v not in self._service_secrets:
                self._service_secrets.append(v)

    def register(self, name: str, payload_model: type[Payload]) -> None:
        """Add (or replace) a job type."""
        if not re.fullmatch(r"[a-z][a-z0-9_.-]{0,49}", name):
            raise ValueError(f"job type names are lowercase identifiers, got {name!r}")
        self._types[name] = payload_model
        self._version += 1

    @property
    def version(self) -> int:
        """A number that changes whenever a type is registered (or replaced): what a job of any type shows
        (its masked payload) may have changed. Read by the API's kept pages (one int, not the tuple of
        the types on every request)."""
        return self._version

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
        """The payload as its model, as a job is created or changed; ``InvalidJob`` with one entry per
        bad field (under ``payload``), including secrets too short to be masked."""
        try:
            parsed = self.model(name).model_validate(payload, context=self._context)
        except ValidationError as exc:
            raise InvalidJob(field_errors(exc, prefix=("payload",))) from None
        items = parsed.secret_items()
        count = len({v for _, v in items})
        if count > MAX_SECRETS:
            raise InvalidJob.single(("payload",), f"{count} secret values; a job carries at most "
                                    f"{MAX_SECRETS} (each is looked for in every line of output)")
        short = dict.fromkeys(loc for loc, v in items if 0 < len(v) < MIN_SECRET_LENGTH)
        if short:
            raise InvalidJob([FieldError(("payload", *loc), f"a secret shorter than {MIN_SECRET_LENGTH} "
                                         "characters cannot be masked in output; use a longer one")
                              for loc in short])
        return parsed

    def validate(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload, validated and normalised to plain JSON data."""
        return self.parse(name, payload).model_dump(mode="json", by_alias=True, exclude_none=True)

    def redact(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload with secrets masked. A type not registered here (a plugin this process did not
        load) or a stored payload its model refuses now is masked by names and text alone, at any depth:
        values under secret-looking names, URL passwords and secret query parameters (only the top-level
        names were looked at before: a read-only token read ``{"config": {"password": ...}}``)."""
        model = self._types.get(name)
        if model is not None:
            try:
                return model.model_validate(payload).redacted()
            except ValidationError:
                pass
        shown: dict[str, Any] = redact_named(payload)
        return shown

    def secrets(self, name: str, payload: dict[str, Any]) -> list[str]:
        """The job's secrets and the service's: what the worker masks in its output."""
        model = self._types.get(name)
        if model is None or model.secrets is Payload.secrets:  # a type that never has secrets
            return list(self._service_secrets)
        try:
            return model.model_validate(payload).secrets() + self._service_secrets
        except ValidationError:
            return list(self._service_secrets)

    def restore(self, name: str, new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        """``new`` (a payload written back after a read) with each ``***`` that stands for a stored secret
        of ``old`` put back - unless what the secrets are bound to changed (another origin, command,
        statement...): then :class:`InvalidJob` names each such field, whose value must be sent again."""
        model = self._types.get(name)
        try:
            stored = model.model_validate(old) if model is not None else None
        except ValidationError:
            stored = None
        if model is None or stored is None:  # masked by key name alone
            return dict(restore_masked(new, self.redact(name, old), old))
        restored: list[Loc] = []
        result: dict[str, Any] = dict(restore_masked(new, stored.redacted(), old, restored))
        if not restored:
            return result
        try:
            changed = [k for k, v in stored.secret_binding().items()
                       if model.model_validate(result).secret_binding().get(k) != v]
        except ValidationError:
            return result  # validation reports what is wrong with it
        if changed:
            what = " and ".join(f"'{k}'" for k in changed)
            raise InvalidJob([FieldError(("payload", *loc), f"{what} changed, so the stored secret shown as "
                                         f"{REDACTED} is not reused: send its value again")
                              for loc in dict.fromkeys(restored)])
        return result


def restore_masked(new: Any, shown: Any, old: Any, restored: list[Loc] | None = None, loc: Loc = ()) -> Any:
    """``new`` with every value that is still as ``shown`` (the redacted view of ``old``) masked it
    taken back from ``old``: ``***`` where a secret was, a URL with ``***`` for its password or a
    secret query parameter. ``restored`` collects where that happened."""
    if new == REDACTED and shown == REDACTED and old is not None and old != REDACTED:
        if restored is not None:
            restored.append(loc)
        return old
    if isinstance(new, dict) and isinstance(old, dict):
        shown_map: dict[str, Any] = shown if isinstance(shown, dict) else {}
        return {k: (restore_masked(v, shown_map.get(k, old.get(k)), old[k], restored, (*loc, k))
                    if k in old else v) for k, v in new.items()}
    if isinstance(new, list) and isinstance(old, list):
        shown_list: list[Any] = shown if isinstance(shown, list) and len(shown) == len(old) else old
        return [restore_masked(v, shown_list[i], old[i], restored, (*loc, i)) if i < len(old) else v
                for i, v in enumerate(new)]
    if isinstance(new, str) and isinstance(old, str) and REDACTED in new:
        if new == shown and shown != old:  # sent back as it was shown (a body, a DSN in a variable)
            if restored is not None:
                restored.append(loc)
            return old
        back = restore_text(new, old)
        if back is not None:
            if restored is not None:
                restored.append(loc)
            return back
    return new


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
