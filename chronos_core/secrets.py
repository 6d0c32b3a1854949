"""Finding secrets in what a job carries, and the forms in which they can show up in output.

Payload models (``payloads.py``) use these to say which of their values are secrets (``secrets()``), to
show a job with them masked (``redacted()``), and to put them back when a redacted job is written back.
The worker masks every form :func:`secret_forms` lists in each output line, the stored output and errors.

What is a secret:

* a value under a secret-looking name (:func:`is_secret_name`): ``password``, ``token``, ``secret``,
  ``api_key``, ``key``, ``*_key``, ``*_pat``, ``auth*``, ``credential``, ``cookie``, ``session``,
  ``private*``, ``signature``, ``dsn`` - in headers, query parameters, environment variables, SQL
  parameters and JSON bodies (at any depth);
* the password in a URL (``scheme://user:password@host``) wherever a URL appears in a value, with
  ``user:password`` (what Basic authentication base64-encodes); a user name alone of 12 characters or
  more (``https://TOKEN@host``: tokens, not people);
* secret-named query parameters inside a URL (``?access_token=...``).

What cannot be promised: a program that was given a secret can always print it in a form not listed
here (reversed, split, encrypted). Masking protects against accidents, not against the job itself.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

__all__ = [
    "MAX_SECRETS",
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "Loc",
    "is_secret_name",
    "redact_query",
    "redact_text",
    "restore_text",
    "secret_forms",
    "text_secrets",
]

REDACTED = "***"
MIN_SECRET_LENGTH = 3
"""Shorter values cannot be masked without masking half the output: payloads refuse them."""
USERNAME_TOKEN_LENGTH = 12
MAX_SECRETS = 100
"""Secret values one job may carry: the worker looks for each, in several forms, in every output line."""

Loc = tuple[str | int, ...]

_SECRET_PART = re.compile(r"pass(word|wd)?|secret|token|api[-_]?key|auth|credential|cookie|session|"
                          r"private|signature|dsn", re.I)
_SECRET_WORDS = frozenset({"key", "pat", "pwd", "apikey", "sig"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a header/variable/parameter/field name suggests its value is a secret
    (``Authorization``, ``DB_PASSWORD``, ``X-Api-Key``, ``key``, ``AWS_ACCESS_KEY_ID``, ``GITLAB_PAT``,
    ``clientSecret``, ``PRIVATE_KEY``...). Names longer than 200 characters are taken for secret ones."""
    if len(name) > 200 or _SECRET_PART.search(name):
        return True
    words = [w.lower() for w in _WORD.findall(name)]
    return any(w in _SECRET_WORDS or (w.endswith("key") and len(w) > 3) for w in words)


# scheme://[user[:password]]@  anywhere in a text (URLs inside env values, DSNs, JSON strings)
# (linear time: a scheme starts at a boundary and is at most 32 characters)
_URL_USERINFO = re.compile(r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)"
                           r"(?P<user>[^/?#@\s:\"']*)"
                           r"(?::(?P<password>[^/?#@\s\"']*))?@")
# name=value pairs of a URL's query string (up to the fragment)
_QUERY = re.compile(r"\?(?P<query>[^#\s\"']*)")


def _userinfo_secrets(m: re.Match[str]) -> list[str]:
    user, password = m.group("user"), m.group("password")
    out = []
    if password:
        out += [unquote(password), password]
        if user:
            out += [f"{unquote(user)}:{unquote(password)}", f"{user}:{password}"]
    elif user and len(unquote(user)) >= USERNAME_TOKEN_LENGTH:
        out += [unquote(user), user]
    return out


def _query_pairs(query: str) -> Iterator[tuple[int, int, str, str]]:
    """(start, end, raw name, raw value) of each secret-named parameter's value in a raw query string."""
    pos = 0
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if eq and value and is_secret_name(unquote(name.replace("+", " "))):
            start = pos + len(name) + 1
            yield start, start + len(value), name, value
        pos += len(part) + 1


def redact_query(query: str) -> str:
    """A raw query string with the values of secret-named parameters (names percent-decoded first:
    ``%74oken`` is ``token``) replaced by ``***``."""
    out, last = [], 0
    for start, end, _, _ in _query_pairs(query):
        out += [query[last:start], REDACTED]
        last = end
    return "".join(out) + query[last:]


def text_secrets(text: str) -> list[str]:
    """Secrets inside a text that are secrets whatever field holds it: URL passwords (and
    ``user:password``), long URL user names, and secret-named query parameters of URLs."""
    if "://" not in text:
        return []
    out: list[str] = []
    for m in _URL_USERINFO.finditer(text):
        out += _userinfo_secrets(m)
    for q in _QUERY.finditer(text):
        for _, _, _, raw in _query_pairs(q.group("query")):
            out += [raw, unquote(raw.replace("+", " "))]
    return [s for s in dict.fromkeys(out) if s]


def redact_text(text: str) -> str:
    """``text`` with the secrets :func:`text_secrets` finds replaced by ``***``, the rest unchanged."""
    def userinfo(m: re.Match[str]) -> str:
        user, password = m.group("user"), m.group("password")
        if password:
            return f"{m.group('scheme')}{user}:{REDACTED}@"
        if user and len(unquote(user)) >= USERNAME_TOKEN_LENGTH:
            return f"{m.group('scheme')}{REDACTED}@"
        return m.group(0)

    if "://" not in text:
        return text
    text = _URL_USERINFO.sub(userinfo, text)

    return _QUERY.sub(lambda m: "?" + redact_query(m.group("query")), text)


def restore_text(new: str, old: str) -> str | None:
    """``new`` with each ``***`` that :func:`redact_text` put in place of a secret of ``old`` filled in
    again from ``old`` (the password or token of its first URL, secret query parameters by name); None
    if there was nothing to fill. Used on a PUT of a redacted job: a URL sent back as shown, or edited
    around its ``***``, keeps its secrets (whether it may, the payload model decides)."""
    if REDACTED not in new:
        return None
    filled = False
    old_url = _URL_USERINFO.search(old)
    first = _URL_USERINFO.search(new)

    def userinfo(m: re.Match[str]) -> str:
        nonlocal filled
        if old_url is None or first is None or m.start() != first.start():
            return m.group(0)
        user, password = m.group("user"), m.group("password")
        if password == REDACTED and old_url.group("password"):
            filled = True
            return f"{m.group('scheme')}{user}:{old_url.group('password')}@"
        if user == REDACTED and password is None and old_url.group("user") and not old_url.group("password"):
            filled = True
            return f"{m.group('scheme')}{old_url.group('user')}@"
        return m.group(0)

    new = _URL_USERINFO.sub(userinfo, new)
    old_values: dict[str, list[str]] = {}
    for q in _QUERY.finditer(old):
        for _, _, name, value in _query_pairs(q.group("query")):
            old_values.setdefault(name, []).append(value)

    def query(m: re.Match[str]) -> str:
        nonlocal filled
        raw = m.group("query")
        out, last = [], 0
        for start, end, name, value in _query_pairs(raw):
            if value == REDACTED and old_values.get(name):
                out += [raw[last:start], old_values[name].pop(0)]
                last = end
                filled = True
        return "?" + "".join(out) + raw[last:]

    if "://" in new:
        new = _QUERY.sub(query, new)
    return new if filled else None


def _variants(secret: str) -> Iterator[str]:
    yield secret
    yield quote(secret, safe="")
    yield quote(secret)
    yield quote_plus(secret)
    yield json.dumps(secret)[1:-1]
    raw = secret.encode("utf-8", "surrogatepass")
    b64 = base64.b64encode(raw).decode()
    yield b64
    yield b64.rstrip("=")
    yield base64.urlsafe_b64encode(raw).decode().rstrip("=")
    yield binascii.hexlify(raw).decode()
    yield binascii.hexlify(raw).decode().upper()


def secret_forms(secrets: Iterable[str | None]) -> list[str]:
    """Every form of each secret the worker masks - the value, URL-encoded (``%2F``, ``+``), JSON-escaped,
    base64 (standard, unpadded, URL-safe), hex - longest first, none shorter than
    ``MIN_SECRET_LENGTH``. (``user:password`` is one of the secrets of a URL with a password, so the
    ``Basic`` header a server echoes back is masked too.)"""
    forms: set[str] = set()
    for s in secrets:
        if s and len(s) >= MIN_SECRET_LENGTH:
            forms.update(v for v in _variants(s) if len(v) >= MIN_SECRET_LENGTH)
    return sorted(forms, key=lambda v: (-len(v), v))


def walk_named(value: Any, loc: Loc = (), secret: bool = False) -> Iterator[tuple[Loc, str]]:
    """(location, value) of each secret in a JSON-like value: scalars under a secret-looking key (at any
    depth), and the secrets inside every string (URL passwords, secret query parameters)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk_named(v, (*loc, k), secret or is_secret_name(str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk_named(v, (*loc, i), secret)
    elif isinstance(value, bool) or value is None:
        return
    elif secret and isinstance(value, str | int | float):
        if str(value):
            yield loc, str(value)
    elif isinstance(value, str):
        for s in text_secrets(value):
            yield loc, s


def redact_named(value: Any, secret: bool = False) -> Any:
    """``value`` as :func:`walk_named` would show it: its secrets replaced by ``***``."""
    if isinstance(value, dict):
        return {k: redact_named(v, secret or is_secret_name(str(k))) for k, v in value.items()}
    if isinstance(value, list):
        if secret and value and all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                    for v in value):
            return REDACTED
        return [redact_named(v, secret) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if secret and isinstance(value, str | int | float):
        return REDACTED if str(value) else value
    if isinstance(value, str):
        return redact_text(value)
    return value


def form_secrets(body: str) -> list[tuple[str, str]]:
    """(name, value) of secret-named fields of a ``application/x-www-form-urlencoded`` body."""
    if "=" not in body or any(c in body for c in " \n\r\t{["):
        return []
    try:
        pairs = parse_qsl(body, keep_blank_values=False, strict_parsing=True)
    except ValueError:
        return []
    return [(k, v) for k, v in pairs if is_secret_name(k) and v]
