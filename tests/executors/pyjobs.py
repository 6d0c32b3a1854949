"""Functions the python job tests schedule: importable, module-level, as users write them."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from chronos_core import RunContext
from chronos_core.errors import ExecutionFailed

log = logging.getLogger("tests.pyjobs")
MAIN_THREAD = threading.main_thread().ident
seen: dict[str, Any] = {}  # what thread-isolated functions saw, for the tests to read


def report(day: str, ctx: RunContext) -> dict[str, Any]:
    ctx.log(f"building {day}")
    print("printed", day)
    log.warning("logged %s", day)
    return {"rows": 42, "run": ctx.run_id, "job": ctx.job_name, "attempt": ctx.attempt,
            "slot": ctx.scheduled_for.isoformat()}


def where() -> dict[str, Any]:
    return {"thread": threading.current_thread().name, "main": threading.get_ident() == MAIN_THREAD}


async def where_async() -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"thread": threading.current_thread().name, "main": threading.get_ident() == MAIN_THREAD,
            "loop": True}


def chatter(tag: str, count: int, barrier_key: str) -> int:
    """Print ``count`` lines tagged ``tag``, taking turns with a concurrent run (a barrier per line)."""
    barrier = seen[barrier_key]
    for i in range(count):
        barrier.wait(timeout=10)
        print(f"{tag} {i}", end="")  # a line in two writes: the newline comes in a second write
        print()
        logging.getLogger("tests.pyjobs").warning("%s log %d", tag, i)
    return count


async def chatter_async(tag: str, count: int) -> int:
    for i in range(count):
        print(f"{tag} {i}")
        await asyncio.sleep(0.001)
    return count


def failing(message: str) -> None:
    print("about to fail")
    _inner(message)


def _inner(message: str) -> None:
    raise KeyError(message)


def permanent() -> None:
    raise ExecutionFailed("the input is gone", retryable=False)


def flaky(counter: str, fail_times: int) -> str:
    """Fails the first ``fail_times`` calls counted under ``counter``."""
    n = seen[counter] = seen.get(counter, 0) + 1
    if n <= fail_times:
        raise ConnectionError(f"call {n} failed")
    return f"ok after {n}"


def stubborn(key: str, seconds: float, ctx: RunContext) -> str:
    """Ignores cancellation for ``seconds``, then records what it saw and returns."""
    time.sleep(seconds)
    seen[key] = ctx.cancelled
    return "late"


def polite(key: str, ctx: RunContext) -> str:
    """Stops as soon as the run is cancelled or timed out (``seen[key + ":started"]`` once it runs)."""
    seen[f"{key}:started"] = "started"
    while not ctx.cancelled:
        time.sleep(0.01)
    seen[key] = "stopped"
    return "stopped"


def sleeper(ctx: RunContext) -> None:
    ctx.log(f"pid {os.getpid()}")
    time.sleep(60)


def unserializable() -> object:
    return object()


def huge() -> str:
    return "x" * 100_000


def no_value() -> None:
    print("nothing to return")


def greet(name: str = "world") -> str:
    print(f"hello {name}")
    return f"hello {name}"


async def agreet(name: str = "world") -> str:
    await asyncio.sleep(0)
    return f"async hello {name}"


async def calls_sync_chronos() -> None:
    """An async job calling a SyncChronos from its own loop (refused: it would wait for itself)."""
    seen["sync"].jobs.list()


def environment() -> list[str]:
    return sorted(os.environ)


def leak(api_token: str) -> str:
    print(f"using token={api_token}")
    return api_token
