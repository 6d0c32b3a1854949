"""The one parser of list filters (run statuses, triggers, event types): the library takes a value or a
collection, the API and the CLI a comma-separated string; both get the same error for an unknown value."""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum
from typing import TypeVar

from .errors import FieldError, InvalidArgument

__all__ = ["enum_set"]

E = TypeVar("E", bound=Enum)


def enum_set(kind: type[E], value: str | E | Collection[str | E] | None, name: str, label: str, *,
             error: type[InvalidArgument] = InvalidArgument) -> set[E] | None:
    """``value`` as a set of ``kind`` members: a comma-separated string (``"failed, timed_out"``), one
    member or a collection of them. ``None`` (or a string with no item) means no filter; an empty
    collection matches nothing. An unknown value raises ``error`` naming the argument ``name`` and the
    known ``label`` values."""
    if value is None:
        return None
    if isinstance(value, str) and not isinstance(value, Enum):
        items: list[str | E] = [p.strip() for p in value.split(",") if p.strip()]
        if not items:
            return None
    elif isinstance(value, Enum):
        items = [value]
    else:
        items = list(value)
    out: set[E] = set()
    for item in items:
        try:
            out.add(kind(item))
        except ValueError:
            known = ", ".join(str(m.value) for m in kind)
            raise error([FieldError((name,), f"unknown {label} {item!r}; known: {known}")]) from None
    return out
