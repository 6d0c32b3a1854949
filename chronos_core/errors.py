"""The exceptions Chronos raises, in one tree.

Every error subclasses :class:`ChronosError` and a built-in that says what kind of failure it is
(``LookupError`` for unknown ids, ``ValueError`` for bad input, ``ConnectionError`` for an unreachable
backend). Each builds its own message; adapters translate driver errors into these at their boundary and
the REST API maps them to problem+json in one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BackendUnavailable",
    "BrokerUnavailable",
    "ChronosError",
    "ExecutionFailed",
    "FieldError",
    "InvalidArgument",
    "InvalidJob",
    "InvalidSchedule",
    "JobNotFound",
    "NameConflict",
    "RunConflict",
    "RunNotFound",
    "ShellNotAllowed",
    "StoreUnavailable",
    "SubscriptionOverflow",
    "UnknownJobType",
]


class ChronosError(Exception):
    """Base class of every error raised by Chronos."""


@dataclass(frozen=True)
class FieldError:
    """One invalid field: ``loc`` is the path to it (``("payload", "url")``), ``reason`` says why."""

    loc: tuple[str | int, ...]
    reason: str

    @property
    def pointer(self) -> str:
        """The field as an RFC 6901 JSON pointer (``/payload/url``)."""
        return "".join(
            "/" + str(p).replace("~", "~0").replace("/", "~1") for p in self.loc
        ) or "/"

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.loc)) or '<root>'}: {self.reason}"


class InvalidJob(ChronosError, ValueError):
    """A job definition (or another command's input) failed validation; ``errors`` lists each field."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("invalid job: " + "; ".join(map(str, self.errors)))

    @classmethod
    def single(cls, loc: tuple[str | int, ...], reason: str) -> InvalidJob:
        return cls([FieldError(loc, reason)])


class InvalidArgument(InvalidJob):
    """An argument that is not part of a job definition is invalid: a filter (a run status that does not
    exist), a status to set, a cursor. ``errors`` name the argument."""


class InvalidSchedule(InvalidJob):
    """A schedule expression or time zone is not valid. ``field`` names the job field it came from."""

    def __init__(self, expression: str, reason: str, field: str = "schedule") -> None:
        self.expression = expression
        self.reason = reason
        self.field = field
        super().__init__([FieldError((field,), reason)])


class UnknownJobType(InvalidJob):
    """No job type (payload model) is registered under this name."""

    def __init__(self, type_name: str, known: Sequence[str]) -> None:
        self.type_name = type_name
        super().__init__(
            [FieldError(("type",), f"unknown job type {type_name!r}; known: {', '.join(sorted(known))}")]
        )


class ShellNotAllowed(InvalidJob):
    """Shell jobs execute code on the host and are refused unless the ``allow_shell`` setting is on."""

    def __init__(self) -> None:
        super().__init__(
            [FieldError(("type",),
                        "shell jobs are disabled here; set CHRONOS_ALLOW_SHELL=true to allow them")]
        )


class JobNotFound(ChronosError, LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class RunNotFound(ChronosError, LookupError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}")


class NameConflict(ChronosError, ValueError):
    """Another job already has this name (names are unique)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a job named {name!r} already exists")


class RunConflict(ChronosError, ValueError):
    """The run cannot make this transition (e.g. cancelling a run that already finished), or a run for the
    same (job, slot, attempt) already exists."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class BackendUnavailable(ChronosError, ConnectionError):
    """A backend (the store, the message broker) cannot be reached; the operation did not happen and may
    be retried. Catch this to wait out any outage; the subclasses say which backend it was."""


class StoreUnavailable(BackendUnavailable):
    """The backing store cannot be reached; the operation did not happen and may be retried."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"store unavailable: {detail}")


class BrokerUnavailable(BackendUnavailable):
    """The message broker (Kafka) behind the dispatch queue or the event bus cannot be reached, or
    refused; the operation did not happen and may be retried."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"broker unavailable: {detail}")


class SubscriptionOverflow(ChronosError, RuntimeError):
    """An event subscriber fell too far behind and was disconnected; resume from ``last_event_id``."""

    def __init__(self, last_event_id: str | None) -> None:
        self.last_event_id = last_event_id
        super().__init__(
            f"event subscriber fell behind and was disconnected after event {last_event_id!r}; "
            "subscribe again with after=<that id> to resume"
        )


class ExecutionFailed(ChronosError, RuntimeError):
    """An executor's classified failure. ``retryable`` says whether another attempt may succeed (a refused
    connection, a 503) or cannot (a 404 by default, a bad payload, a missing named connection)."""

    def __init__(self, message: str, *, retryable: bool = True, exit_code: int | None = None) -> None:
        self.retryable = retryable
        self.exit_code = exit_code
        super().__init__(message)
