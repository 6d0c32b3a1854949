"""What every built-in executor shares: payload parsing and secret masking for error messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import ValidationError

from chronos_core.errors import ExecutionFailed
from chronos_core.payloads import REDACTED, Payload, field_errors

__all__ = ["mask", "parse_payload"]

P = TypeVar("P", bound=Payload)


def parse_payload(model: type[P], payload: dict[str, Any]) -> P:
    """The job's payload as ``model``; a bad payload is a non-retryable failure (it will not get better)."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        detail = "; ".join(map(str, field_errors(exc, prefix=("payload",))))
        raise ExecutionFailed(f"invalid payload: {detail}", retryable=False) from None


def mask(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (of 3 characters or more) replaced by ``***``."""
    for s in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    return text
