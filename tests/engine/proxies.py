"""Failing proxies: a real adapter (store, bus, queue) wrapped so that a test can make one of its methods
fail, or do something in between (the other side of a race), deterministically. Not mocks: every call
reaches the real adapter unless a hook decides otherwise, and what is asserted is the adapter's state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Hook = Callable[..., Awaitable[Any]]
"""``hook(real_method, *args, **kwargs)``: call ``real_method`` or not, raise before or after it."""


class Proxy:
    """Forwards every attribute to ``inner``; an async method named in ``hooks`` goes through its hook.
    ``calls`` counts the calls of hooked methods."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hooks: dict[str, Hook] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        hook = self.hooks.get(name)
        if hook is None:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await hook(attr, *args, **kwargs)
        return call

    def fail(self, name: str, exc: BaseException, times: int = 1, *, after: bool = False) -> None:
        """The next ``times`` calls of ``name`` raise ``exc``: before reaching the adapter, or (``after``)
        once the adapter applied them, as when a commit succeeds and the connection breaks before the
        answer arrives."""
        left = times

        async def hook(real: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
            nonlocal left
            if left <= 0:
                return await real(*args, **kwargs)
            left -= 1
            if after:
                await real(*args, **kwargs)
            raise exc
        self.hooks[name] = hook

    def once_before(self, name: str, action: Callable[[], Awaitable[Any]]) -> None:
        """Run ``action`` (the other side of a race) right before the next call of ``name`` reaches the
        adapter."""
        done = False

        async def hook(real: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
            nonlocal done
            if not done:
                done = True
                await action()
            return await real(*args, **kwargs)
        self.hooks[name] = hook

    def once_after(self, name: str, action: Callable[[Any], Awaitable[Any]]) -> None:
        """Run ``action(result)`` right after the next call of ``name`` returned from the adapter, before
        the caller sees the result."""
        done = False

        async def hook(real: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
            nonlocal done
            result = await real(*args, **kwargs)
            if not done:
                done = True
                await action(result)
            return result
        self.hooks[name] = hook
