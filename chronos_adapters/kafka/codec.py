"""JSON encoding of what travels through Kafka: dispatches (a run with its job) and events.

One schema, versioned by the ``v`` field: datetimes as ISO 8601 strings with their offset, enums by value,
the retry policy as its pydantic model. Encoding and decoding go through pydantic's type adapters over the
domain dataclasses, so a field added to ``Run`` / ``Job`` / ``Event`` travels without touching this file.
A message that does not decode raises :class:`DecodeError` (the queue dead-letters it).
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from chronos_core.models import Event, Job, Run
from chronos_core.ports import Dispatch

__all__ = ["VERSION", "DecodeError", "decode_dispatch", "decode_event", "encode_dispatch", "encode_event"]

VERSION = 1

_run = TypeAdapter(Run)
_job = TypeAdapter(Job)
_event = TypeAdapter(Event)
_envelope: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


class DecodeError(ValueError):
    """The bytes are not a message of a schema version this code reads."""


def _open(raw: bytes, kind: str) -> dict[str, Any]:
    try:
        doc = _envelope.validate_json(raw)
    except ValidationError as exc:
        raise DecodeError(f"not a JSON object: {exc.errors()[0]['msg']}") from None
    if doc.get("v") != VERSION:
        raise DecodeError(f"unsupported schema version {doc.get('v')!r} (this code reads {VERSION})")
    if doc.get("kind") != kind:
        raise DecodeError(f"expected a {kind!r} message, got {doc.get('kind')!r}")
    return doc


def encode_dispatch(dispatch: Dispatch) -> bytes:
    return _envelope.dump_json({
        "v": VERSION, "kind": "dispatch",
        "run": _run.dump_python(dispatch.run, mode="json"),
        "job": _job.dump_python(dispatch.job, mode="json"),
    })


def decode_dispatch(raw: bytes) -> Dispatch:
    doc = _open(raw, "dispatch")
    try:
        return Dispatch(run=_run.validate_python(doc["run"]), job=_job.validate_python(doc["job"]))
    except (KeyError, ValidationError) as exc:
        raise DecodeError(f"invalid dispatch: {exc}") from None


def encode_event(event: Event) -> bytes:
    """The event without its ``id``: the id is the message's position in the topic."""
    body = _event.dump_python(event, mode="json")
    body.pop("id", None)
    return _envelope.dump_json({"v": VERSION, "kind": "event", "event": body})


def decode_event(raw: bytes, id: str | None = None) -> Event:
    doc = _open(raw, "event")
    try:
        event = _event.validate_python(doc["event"])
    except (KeyError, ValidationError) as exc:
        raise DecodeError(f"invalid event: {exc}") from None
    event.id = id
    return event
