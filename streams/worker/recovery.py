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

12. **Restores read a record at a time.** Faust's recovery hands each changelog record to
   its tables as an event, through a queue and a `wait_for` each: ~5,500 records/s, minutes
   for a million keys. `Recovery` reads the active partitions' changelogs itself before
   Faust's loop starts, in large fetches of a read_committed consumer of its own, and hands
   each fetch to the store at once (the RocksDB store, `streams.worker.committed_store`,
   writes it in one write batch with its offset; others take it through the table's
   `apply_changelog_batch`). Faust's loop then finds nothing left to read. A restore longer
   than half of `broker_request_timeout` (Faust's bound on this step) leaves the rest to
   Faust's loop.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faust.tables import manager as faust_manager
from faust.tables import recovery as faust_recovery
from faust.tables.base import Collection
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, CollectionT, ConsumerT, EventT, Message
from typing_extensions import override

from streams.worker.committed_store import Store as CommittedStore
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


RESTORE_FETCH_BYTES = 64 * 1024 * 1024
"""How much one fetch of a streamed restore may bring (per partition: a quarter)."""


Apply = Callable[[TP, list[ConsumerRecord[bytes, bytes]]], None]
"""What takes a fetch of a changelog partition's records, in offset order."""


async def stream_changelogs(
    bootstrap_servers: str | list[str],
    starts: Mapping[TP, int],
    lasts: Mapping[TP, int],
    apply: Apply,
    *,
    deadline: float,
) -> int:
    """Read each partition's committed records from `starts` to `lasts` (the offset of the
    last one to read, as `changelog_ends` - 1), a fetch at a time, handing each to `apply`;
    stop at `deadline` (monotonic) if not done. Returns how many records were applied."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a compacted start: the first record kept
        fetch_max_bytes=RESTORE_FETCH_BYTES,
        max_partition_fetch_bytes=RESTORE_FETCH_BYTES // 4,
    )
    await reader.start()
    applied = 0
    # aiokafka wants its own TopicPartition (Faust's TP is another named tuple).
    partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in starts}
    try:
        reader.assign(list(partitions))
        for partition, tp in partitions.items():
            reader.seek(partition, starts[tp])
        reading = {partition for partition, tp in partitions.items() if starts[tp] <= lasts[tp]}
        while reading and time.monotonic() < deadline:
            fetched = await reader.getmany(*reading, timeout_ms=500)
            for partition, records in fetched.items():
                last = lasts[partitions[partition]]
                if records and records[-1].offset > last:
                    records = [r for r in records if r.offset <= last]
                if records:
                    apply(partitions[partition], records)
                    applied += len(records)
            reading = {
                partition
                for partition in reading
                if await reader.position(partition) <= lasts[partitions[partition]]
            }
    finally:
        await reader.stop()
    return applied


class Restored:
    """A changelog record as a table applies it (`apply_changelog_batch` reads an event's
    key and value, and its message's partition, offset, key and value): it is both."""

    __slots__ = ("key", "offset", "partition", "tp", "value")

    def __init__(self, tp: TP, record: ConsumerRecord[bytes, bytes]) -> None:
        self.tp = tp
        self.partition = tp.partition
        self.offset = record.offset
        self.key = record.key
        self.value = record.value

    @property
    def message(self) -> Restored:
        return self


class Recovery(faust_recovery.Recovery):
    """Restores stream the changelogs (item 12); a restore that did not read every record up
    to a partition's end never completes: the worker exits instead, before any stream
    resumes."""

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
            await self._stream(tps, offsets, self._read)
        await super()._seek_offsets(consumer, tps, offsets, title)

    async def _stream(self, tps: set[TP], offsets: Counter[TP], read: dict[TP, int]) -> None:
        """Apply the active changelog partitions from after `offsets` (the last offset each
        table holds) up to their ends, a fetch at a time; `offsets` and `read` follow."""
        ends = self.active_highwaters
        behind = {tp for tp in tps if ends.get(tp, -1) > offsets[tp]}
        started = time.monotonic()
        restored = 0
        if behind:
            restored = await self._read_changelogs(behind, offsets, read, started)
        elapsed = time.monotonic() - started
        log.info(
            "restore streamed %d changelog records of %d partitions (%d behind) in %.2f s "
            "(%d records/s)%s",
            restored,
            len(tps),
            len(behind),
            elapsed,
            restored / elapsed if elapsed > 0 else 0,
            "" if all(offsets[tp] >= ends.get(tp, -1) for tp in tps) else "; the rest follows",
        )  # fmt: skip

    async def _read_changelogs(
        self, behind: set[TP], offsets: Counter[TP], read: dict[TP, int], started: float
    ) -> int:
        transport = self.app.transport

        def applied(tp: TP, records: list[ConsumerRecord[bytes, bytes]]) -> None:
            self._apply(tp, records)
            offsets[tp] = read[tp] = records[-1].offset

        return await stream_changelogs(
            faust_aiokafka.server_list(transport.url, cast(Any, transport).default_port),
            {tp: offsets[tp] + 1 for tp in behind},
            {tp: self.active_highwaters[tp] for tp in behind},
            applied,
            deadline=started + self.app.conf.broker_request_timeout / 2,
        )

    def _apply(self, tp: TP, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        table = self.tp_to_table[tp]
        store = getattr(table, "data", None)
        if isinstance(store, CommittedStore):
            store.restore(tp.partition, records)
        else:
            table.apply_changelog_batch(cast(Any, [Restored(tp, r) for r in records]))

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
    """Faust's table manager, restoring with `Recovery` (`recovery_class`)."""

    recovery_class: ClassVar[type[Recovery]] = Recovery

    @property
    @override
    def recovery(self) -> Recovery:
        if not isinstance(self._recovery, Recovery):
            self._recovery = self.recovery_class(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

    @override
    def add(self, table: CollectionT) -> CollectionT:
        if not isinstance(table, ChangelogReads):
            raise TypeError(
                f"{table} does not tell the recovery what it restores: its class must be a "
                "streams.worker.recovery.ChangelogReads (the app's Table setting)"
            )
        return super().add(table)
