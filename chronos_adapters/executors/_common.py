"""What every built-in executor shares: payload parsing and secret masking for error messages."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import ValidationError

from chronos_core.errors import ExecutionFailed
from chronos_core.payloads import REDACTED, Payload, field_errors
from chronos_core.secrets import secret_forms

__all__ = ["Threads", "mask", "parse_payload"]

P = TypeVar("P", bound=Payload)
T = TypeVar("T")


def parse_payload(model: type[P], payload: dict[str, Any]) -> P:
    """The job's payload as ``model``; a bad payload is a non-retryable failure (it will not get better)."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        detail = "; ".join(map(str, field_errors(exc, prefix=("payload",))))
        raise ExecutionFailed(f"invalid payload: {detail}", retryable=False) from None


def mask(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (of 3 characters or more), in each form the worker masks (URL-encoded,
    base64, hex...), replaced by ``***``."""
    for s in secret_forms(secrets):
        text = text.replace(s, REDACTED)
    return text


class Threads:
    """An executor's own thread pool for blocking drivers, so its slow calls neither starve nor are
    starved by the event loop's default pool (which also resolves host names)."""

    def __init__(self, name: str, size: int = 32) -> None:
        self._name = name
        self._size = size
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._size, thread_name_prefix=self._name)
            pool = self._pool
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self) -> None:
        """Stop taking work; calls still running finish in the background."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
