"""When table keys age out, by event time, so that state stays bounded.

Faust's own expiring (windowed) tables go by the wall clock and never expire what they
restored from a changelog (faust-streaming #385, #193). Here each partition keeps a heap of
(expires_at, key) and a watermark: the newest event time seen in that partition. A key is
due once the watermark passes its expiry. The heap may hold stale entries for keys that were
renewed since; whoever deletes checks the stored value's own expiry first. `swept` is the
watermark of the partition's last `due`: no key has been dropped for a newer one, which bounds
what a request's absent (or since re-created) key may have held.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable

INDEXED_PER_TURN = 10_000
"""Keys indexed between two yields to the event loop while rebuilding after a restore."""


class ExpiryIndex:
    def __init__(self) -> None:
        self._heaps: defaultdict[int, list[tuple[int, str]]] = defaultdict(list)
        self._watermarks: dict[int, int] = {}
        self._swept: dict[int, int] = {}

    def add(self, partition: int, key: str, expires_at: int) -> None:
        heapq.heappush(self._heaps[partition], (expires_at, key))

    def observe(self, partition: int, event_time: int) -> None:
        """Advance the partition's watermark to `event_time` if it is newer."""
        if event_time > self._watermarks.get(partition, event_time - 1):
            self._watermarks[partition] = event_time

    def watermark(self, partition: int) -> int | None:
        return self._watermarks.get(partition)

    def swept(self, partition: int) -> int | None:
        """The watermark of the partition's last `due`: every key due so far was due by it."""
        return self._swept.get(partition)

    def due(self, partition: int, limit: int = 1000) -> list[str]:
        """Pop up to `limit` keys whose expiry the partition's watermark has passed."""
        watermark = self._watermarks.get(partition)
        if watermark is not None:
            self._swept[partition] = watermark
        heap = self._heaps.get(partition)
        due: list[str] = []
        while heap and watermark is not None and len(due) < limit and heap[0][0] <= watermark:
            due.append(heapq.heappop(heap)[1])
        return due

    def sweep(self, partition: int, stored_expiry: Callable[[str], int | None]) -> list[str]:
        """The due keys to drop, each once: those whose stored state (`stored_expiry`, None
        once the key is gone) still expires by the watermark. One renewed since it was
        indexed is indexed again at its new expiry."""
        watermark = self._watermarks.get(partition)
        aged_out: dict[str, None] = {}  # a key is indexed again at every renewal
        for key in self.due(partition):
            expires_at = stored_expiry(key)
            if expires_at is None or key in aged_out:
                continue
            assert watermark is not None  # nothing is due without one
            if expires_at <= watermark:
                aged_out[key] = None
            else:
                self.add(partition, key, expires_at)
        return list(aged_out)

    def forget(self, partitions: set[int]) -> None:
        """Drop what is known of partitions this worker no longer owns."""
        for partition in partitions:
            self._heaps.pop(partition, None)
            self._watermarks.pop(partition, None)
            self._swept.pop(partition, None)

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())


async def rebuilt(entries: Iterable[tuple[int, str, int]]) -> ExpiryIndex:
    """An index of (partition, key, expires_at) entries, read from a restored table.

    A restored million keys take seconds to index: the event loop gets a turn every
    `INDEXED_PER_TURN` keys, so timers and the web routes do not stall meanwhile.
    """
    index = ExpiryIndex()
    for count, (partition, key, expires_at) in enumerate(entries, start=1):
        index.add(partition, key, expires_at)
        if count % INDEXED_PER_TURN == 0:
            await asyncio.sleep(0)
    return index
