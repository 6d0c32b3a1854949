"""Python jobs: a plain importable function as a job (``type: python``).

A ``python`` job names its function by import path, ``"package.module:qualname"``, with JSON arguments;
the worker imports it and calls it (``chronos_adapters.executors.python.PythonExecutor``). This module
holds what the domain knows about it: the payload model, the :class:`RunContext` a function may ask for,
how a function's import path is found (refusing what another process could not import) and the module
allow-list rule. Nothing here imports or runs user code.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import ExecutionFailed
from .payloads import FUNCTION_REF, PythonPayload

__all__ = [
    "FUNCTION_REF",
    "PythonPayload",
    "RunContext",
    "function_ref",
    "module_allowed",
    "split_ref",
]

_REF = re.compile(FUNCTION_REF)


def split_ref(ref: str) -> tuple[str, str]:
    """``"pkg.mod:a.b"`` → ``("pkg.mod", "a.b")``; ValueError if it is not such a reference."""
    if not _REF.match(ref):
        raise ValueError(f"{ref!r} is not an import path like 'package.module:function'")
    module, _, qualname = ref.partition(":")
    return module, qualname


def function_ref(func: Callable[..., Any]) -> str:
    """The import path of ``func`` (``"module:qualname"``), which any process with the same code can
    import. A lambda, a nested function or closure, a bound method of an instance, a builtin or anything
    that is not found again at that path is refused with a ``ValueError`` that says why."""
    target = inspect.unwrap(func) if not inspect.ismethod(func) else func
    if inspect.ismethod(target) and not inspect.isclass(target.__self__):
        raise ValueError(f"{func!r} is a method bound to an instance: schedule a module-level function "
                         "(or a static/class method) that another process can import")
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not callable(func) or not module or not qualname:
        raise ValueError(f"{func!r} has no import path: schedule a module-level function")
    if qualname == "<lambda>" or "<lambda>" in qualname:
        raise ValueError("a lambda cannot be scheduled: another process could not import it; define a "
                         "module-level function")
    if "<locals>" in qualname:
        raise ValueError(f"{module}.{qualname} is defined inside a function (a nested function or "
                         "closure): another process could not import it; define it at module level")
    ref = f"{module}:{qualname}"
    if not _REF.match(ref):
        raise ValueError(f"{ref!r} is not an importable path")
    import sys

    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is None or not (found is func or found == func
                             or inspect.unwrap(found) is inspect.unwrap(func)):
        raise ValueError(f"{ref} does not lead back to {func!r} (is it defined at module level under "
                         "that name?)")
    return ref


def module_allowed(module: str, allowed: Iterable[str]) -> bool:
    """Whether ``module`` is one of the ``allowed`` prefixes, on dotted boundaries: ``"myapp"`` allows
    ``myapp`` and ``myapp.jobs``, not ``myapplication``; ``"*"`` allows every module."""
    for prefix in allowed:
        prefix = prefix.strip().rstrip(".")
        if prefix == "*" or module == prefix or (prefix and module.startswith(prefix + ".")):
            return True
    return False


@dataclass(slots=True, eq=False)
class RunContext:
    """What a function running as a job may know and do: declare a parameter annotated ``RunContext``
    (any name) and the worker passes it.

    ``log(message)`` is a ``run.log`` line of this run (as are ``print`` and ``logging`` inside the
    function); ``cancelled`` turns true when the run is cancelled or timed out - a function in a thread
    cannot be stopped from outside, so a long one should look at it (or call ``raise_if_cancelled``)."""

    run_id: str
    job_id: str
    job_name: str
    attempt: int
    scheduled_for: datetime
    trigger: str
    _emit: Callable[[str, str], None] = field(repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def log(self, message: object, stream: str = "stdout") -> None:
        """One line (or several, if ``message`` holds newlines) of this run's output."""
        self._emit(str(message), stream)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """Stop here if the run was cancelled or timed out."""
        if self._cancel.is_set():
            raise ExecutionFailed("the run was cancelled", retryable=False)


@functools.lru_cache(maxsize=4096)
def context_parameter(func: Callable[..., Any]) -> str | None:
    """The name of ``func``'s parameter annotated :class:`RunContext`, if any (also when the annotation
    is a string, as under ``from __future__ import annotations``)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return None
    for name, p in params.items():
        ann = p.annotation
        if ann is RunContext or (isinstance(ann, str) and ann.rsplit(".", 1)[-1] == "RunContext"):
            return name
    return None
