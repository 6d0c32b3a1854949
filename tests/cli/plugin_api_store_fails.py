"""A CHRONOS_PLUGINS module for tests/cli/test_serve_threads.py: the API's own store (the SQL store's
sibling, opened by the API thread's lifespan) fails to open, so the API thread ends on its own."""

from __future__ import annotations

from typing import Any


def register(chronos: Any) -> None:
    store = chronos.store
    make_sibling = store.sibling

    def sibling(**options: Any) -> Any:
        other = make_sibling(**options)

        async def start() -> None:
            raise RuntimeError("the API's store cannot open (test plugin)")

        other.start = start
        return other

    store.sibling = sibling
