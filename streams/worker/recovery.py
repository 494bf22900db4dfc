"""Restoring tables from their changelogs: subclasses of faust-streaming 0.15.3's
`TableManager`, `Recovery` and `Table` (as `ChangelogReads`), set in the app's settings.

10. **Restores waited 10 s, then could skip what they had not read.** Faust restores a
   changelog partition up to its end offset minus one, but a transactional changelog ends
   with a commit marker (often after aborted records) that no consumer is handed: recovery
   never got there, and after 10 s without changelog events it assumed an aborted
   transaction and jumped to the end whether or not it had read the records before it.
   The consumer thread (`streams.worker.kafka_transport`) gives recovery the offset after
   each partition's last committed record (`changelog_ends`), so a restore ends as soon as it
   has read everything, and `Recovery` makes a worker whose restore missed records exit
   (status 70) before any stream resumes, instead of deciding on tables with holes. The
   consumer also turns off Faust's guess at aborted transactions, which marks a partition
   restored once its fetch position reaches the highwater: made for a highwater on a commit
   marker, it skipped the last committed record, and it fires on the first 5 s tick of a
   recovery when the changelog queue was idle for 10 s before it (the counter is never
   reset), often before the first fetch (`tests/scale` `scale_out`: "Aborted tx until
   highwater" 17 ms into a recovery, then a restore that had read nothing).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from faust.tables import manager as faust_manager
from faust.tables import recovery as faust_recovery
from faust.tables.base import Collection
from faust.types import TP, CollectionT, ConsumerT, EventT, Message
from typing_extensions import override

from streams.worker.exit_status import FAILED_EXIT
from streams.worker.tables import RawTable

log = logging.getLogger(__name__)


async def changelog_ends(
    bootstrap_servers: str | list[str], ends: Mapping[TP, int]
) -> dict[TP, int]:
    """For each partition, the offset just after its last committed record below `ends`
    (its last stable offset), or its log start offset if it holds none.

    Reads each partition's tail with a read_committed consumer, a window that grows until a
    record shows: what follows the last record is transaction markers and aborted records,
    which no consumer is ever handed.
    """
    if not ends:
        return {}
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        partitions = list(ends)
        reader.assign(partitions)
        starts: Mapping[TP, int] = await reader.beginning_offsets(partitions)
        found = {tp: starts[tp] for tp in partitions if ends[tp] <= starts[tp]}
        window = 64
        while pending := [tp for tp in partitions if tp not in found]:
            froms = {tp: max(starts[tp], ends[tp] - window) for tp in pending}
            for tp in pending:
                reader.seek(tp, froms[tp])
            last = await _last_records(reader, {tp: ends[tp] for tp in pending})
            for tp in pending:
                if tp in last:
                    found[tp] = last[tp] + 1
                elif froms[tp] == starts[tp]:
                    found[tp] = starts[tp]
            window *= 16
        return found
    finally:
        await reader.stop()


async def _last_records(
    reader: AIOKafkaConsumer, ends: Mapping[TP, int], timeout_s: float = 60.0
) -> dict[TP, int]:
    """The offset of the last record below its end that `reader` reads in each partition."""
    last: dict[TP, int] = {}
    deadline = time.monotonic() + timeout_s
    reading = set(ends)
    while reading:
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read to the end of {sorted(reading)}")
        batch = await reader.getmany(*reading, timeout_ms=500)
        for tp, records in batch.items():
            offsets = [r.offset for r in records if r.offset < ends[tp]]
            if offsets:
                last[tp] = max(offsets)
        reading = {tp for tp in reading if await reader.position(tp) < ends[tp]}
    return last


class Recovery(faust_recovery.Recovery):
    """A restore that did not read every record up to a partition's end never completes: the
    worker exits instead, before any stream resumes."""

    _read: dict[TP, int] | None = None
    """The last changelog offset each active table partition holds (-1: none), once a
    restore has begun."""

    @override
    async def _seek_offsets(
        self, consumer: ConsumerT, tps: set[TP], offsets: Counter[TP], title: str
    ) -> None:
        if title == "active":
            # The last offset each table already holds (-1: none); reading goes on from it.
            self._read = {tp: offsets[tp] for tp in tps}
        await super()._seek_offsets(consumer, tps, offsets, title)

    def read(self, message: Message) -> None:
        """A table has applied this changelog record."""
        read = self._read
        if read is not None and message.offset > read.get(message.tp, math.inf):
            read[message.tp] = message.offset

    @override
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        read = self._read or {}
        missed = {
            tp: (read[tp], end)
            for tp, end in self.active_highwaters.items()
            if tp in read and read[tp] < end
        }
        if missed:
            log.critical(
                "a restore missed changelog records (partition: last read, last record): "
                "%s; the worker exits", missed,
            )  # fmt: skip
            logging.shutdown()
            os._exit(FAILED_EXIT)
        await super().on_recovery_completed(generation_id)


class ChangelogReads(Collection):
    """A table that tells `Recovery` what each restore has read: every table of the app is one
    (`TableManager` refuses others, whose restores would all look incomplete)."""

    @override
    async def on_changelog_event(self, event: EventT[Any]) -> None:
        tables = self.app.tables
        if isinstance(tables, TableManager):
            tables.recovery.read(event.message)
        await super().on_changelog_event(event)


class RestoredTable(ChangelogReads, RawTable):
    """The app's `Table` class."""


class TableManager(faust_manager.TableManager):
    """Faust's table manager, restoring with `Recovery`."""

    @property
    @override
    def recovery(self) -> Recovery:
        if not isinstance(self._recovery, Recovery):
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

    @override
    def add(self, table: CollectionT) -> CollectionT:
        if not isinstance(table, ChangelogReads):
            raise TypeError(
                f"{table} does not tell the recovery what it restores: its class must be a "
                "streams.worker.recovery.ChangelogReads (the app's Table setting)"
            )
        return super().add(table)
