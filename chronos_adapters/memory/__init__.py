"""In-memory adapters: the embedded default's queue and bus, and the reference store / test doubles."""

from .bus import MemoryEventBus, MemorySubscription
from .queue import MemoryDispatchQueue
from .store import MemoryStore

__all__ = ["MemoryDispatchQueue", "MemoryEventBus", "MemoryStore", "MemorySubscription"]
