"""RFC 9457 problem details: every error the API returns, mapped from exceptions in ONE table.

Domain errors come from ``chronos_core.errors``; the few that only exist at the HTTP boundary (a body too
large, a wrong media type, auth) are defined here. Anything not in the table is a bug and answers 500
(still as problem+json, without internals).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chronos_core.errors import (
    BackendUnavailable,
    BrokerUnavailable,
    ChronosError,
    FieldError,
    InvalidArgument,
    InvalidJob,
    JobNotFound,
    NameConflict,
    RunConflict,
    RunNotFound,
    StoreUnavailable,
)
from chronos_core.payloads import field_errors

__all__ = [
    "PROBLEMS",
    "ApiError",
    "BodyTooLarge",
    "Forbidden",
    "IdempotencyKeyReused",
    "InvalidParameters",
    "MalformedJson",
    "MisdirectedHost",
    "Unauthorized",
    "UnsupportedMediaType",
    "problem_response",
]

log = logging.getLogger("chronos.api")
PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://chronos.dev/problems/"


class ApiError(Exception):
    """An error that only exists at the HTTP boundary."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class MalformedJson(ApiError):
    pass


class BodyTooLarge(ApiError):
    pass


class UnsupportedMediaType(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class IdempotencyKeyReused(ApiError):
    pass


class MisdirectedHost(ApiError):
    """The request's Host is not one this server answers for (auth off: loopback names only)."""


class InvalidParameters(InvalidArgument):
    """Query or path parameters failed validation (``errors`` point at the parameter by name)."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(errors)
        self.args = ("invalid parameters: " + "; ".join(map(str, self.errors)),)

    @classmethod
    def from_validation(cls, exc: ValidationError) -> InvalidParameters:
        return cls(field_errors(exc))


# exception class -> (status, problem type slug, title). Looked up along the exception's MRO.
PROBLEMS: dict[type[BaseException], tuple[int, str, str]] = {
    MalformedJson: (400, "malformed-json", "The request body is not valid JSON"),
    Unauthorized: (401, "unauthorized", "Authentication required"),
    Forbidden: (403, "forbidden", "Not allowed"),
    JobNotFound: (404, "job-not-found", "Job not found"),
    RunNotFound: (404, "run-not-found", "Run not found"),
    MisdirectedHost: (421, "misdirected-request", "This server does not answer for that host"),
    NameConflict: (409, "name-conflict", "A job with this name already exists"),
    RunConflict: (409, "run-conflict", "The run cannot do that in its current state"),
    BodyTooLarge: (413, "body-too-large", "The request body is too large"),
    UnsupportedMediaType: (415, "unsupported-media-type", "The request body must be JSON"),
    InvalidParameters: (422, "invalid-parameters", "Invalid parameters"),
    InvalidArgument: (422, "invalid-argument", "Invalid argument"),
    InvalidJob: (422, "invalid-job", "Invalid input"),
    IdempotencyKeyReused: (422, "idempotency-key-reused",
                           "The Idempotency-Key was already used with another request"),
    StoreUnavailable: (503, "store-unavailable", "The store is unavailable; try again"),
    BrokerUnavailable: (503, "broker-unavailable", "The message broker is unavailable; try again"),
    BackendUnavailable: (503, "backend-unavailable", "A backend is unavailable; try again"),
}

_HTTP_TITLES = {404: "Not found", 405: "Method not allowed"}


def _lookup(exc: BaseException) -> tuple[int, str, str] | None:
    for cls in type(exc).__mro__:
        if cls in PROBLEMS:
            return PROBLEMS[cls]
    return None


MAX_ERRORS = 50  # entries listed in a problem; the rest are counted
MAX_TEXT = 300  # characters of one pointer or reason
MAX_DETAIL = 2000


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _field_entries(errors: Sequence[FieldError]) -> list[dict[str, str]]:
    """The errors as problem entries - bounded: a problem never echoes a huge input back (a list of
    200,000 bad items, a megabyte-long key)."""
    entries = [{"pointer": _cut(e.pointer), "reason": _cut(e.reason)} for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        entries.append({"pointer": "/", "reason": f"... and {len(errors) - MAX_ERRORS} more errors"})
    return entries


def problem_response(status: int, slug: str, title: str, detail: str | None = None, *,
                     instance: str | None = None, errors: list[dict[str, str]] | None = None,
                     headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"type": TYPE_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = _cut(instance, MAX_DETAIL)
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def exception_problem(exc: BaseException, instance: str | None = None) -> Response:
    """The problem response for an exception (500 for anything not in the table)."""
    if isinstance(exc, HTTPException):
        title = _HTTP_TITLES.get(exc.status_code, "HTTP error")
        slug = title.lower().replace(" ", "-")
        return problem_response(exc.status_code, slug, title, _cut(str(exc.detail), MAX_DETAIL),
                                instance=instance,
                                headers=dict(exc.headers or {}) or None)
    entry = _lookup(exc)
    if entry is None:
        log.error("unhandled error at %s", instance, exc_info=exc)
        return problem_response(500, "internal-error", "Internal server error",
                                "the error was logged", instance=instance)
    status, slug, title = entry
    errors = _field_entries(exc.errors) if isinstance(exc, InvalidJob) else None
    detail = str(exc)
    if isinstance(exc, InvalidJob) and len(exc.errors) > MAX_ERRORS:
        detail = f"{len(exc.errors)} invalid fields, the first {MAX_ERRORS} are listed"
    headers = {"WWW-Authenticate": 'Bearer realm="chronos"'} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, BackendUnavailable):
        headers = {"Retry-After": "5"}
    return problem_response(status, slug, title, _cut(detail, MAX_DETAIL), instance=instance,
                            errors=errors, headers=headers)


async def handle(request: Request, exc: Exception) -> Response:
    return exception_problem(exc, request.url.path)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: handle,
    ChronosError: handle,
    ApiError: handle,
    Exception: handle,
}
