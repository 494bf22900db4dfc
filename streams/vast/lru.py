"""A least-recently-used map bounded by entries and by bytes, for what a worker may reuse.

Sizes are the caller's estimate of what an entry pins. An entry larger than `max_entry_bytes`
is never kept: one huge document must not push out everything else, nor stay in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    def __init__(self, *, max_entries: int, max_bytes: int, max_entry_bytes: int) -> None:
        if min(max_entries, max_bytes, max_entry_bytes) < 1:
            raise ValueError("every bound must be >= 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.bytes = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, size: int) -> None:
        """Keep `value` (`size` bytes) under `key`, evicting the least recently used entries
        as needed; a value past `max_entry_bytes` is not kept."""
        if size > self.max_entry_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
