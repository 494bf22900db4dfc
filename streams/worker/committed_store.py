"""The worker's RocksDB store: table writes reach disk only once their Kafka transaction has
committed, in one write batch with the changelog offset they correspond to.

13. **RocksDB files could not be trusted after a crash.** Faust's RocksDB store writes each
   change as it is made, before its transaction commits, and records its changelog offsets
   only while restoring: after a SIGKILL the disk could hold writes of aborted transactions,
   and nothing said which changelog records it held. So the worker threw its files away
   after every unclean stop and restored everything (a million keys: ~7 minutes).

`Store` (URL scheme `adstream-rocksdb://`, pyproject.toml's `faust.stores` entry point) keeps
a partition's writes in memory, where reads see them, until `persist` is called after the
transactions that sent their changelog records have committed
(`streams.worker.commit_protocol.Committer`). `persist` writes them with the offset of the
last of those records, in one RocksDB write batch per partition: a partition's database always
holds exactly the changelog's committed records up to the offset it holds, whatever the moment
the worker dies. A restore then reads only the changelog after that offset. Writes of a
transaction that never commits never leave memory. Restored and standby records are written
the same way, a batch with its offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, Protocol, cast

from faust.stores import rocksdb as faust_rocksdb
from faust.streams import current_event
from faust.types import TP, CollectionT, EventT, Message
from rocksdict import Rdict, WriteBatch
from typing_extensions import override

SCHEME = "adstream-rocksdb"
"""The store URL scheme that picks `Store` (pyproject.toml's `faust.stores`)."""


class Changelogged(Protocol):
    """A changelog record as read (Faust's `Message`, aiokafka's `ConsumerRecord`)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def offset(self) -> int: ...


Writes = dict[bytes, bytes | None]
"""A partition's writes waiting for their transaction: key -> value (None: deleted)."""


class Store(faust_rocksdb.Store):
    """Faust's RocksDB store (rocksdict), writing only what has committed."""

    @override
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[int, Writes] = {}
        self._sent: dict[int, list[tuple[TP, asyncio.Future[Any]]]] = {}

    def sent(self, partition: int, source: TP, record: asyncio.Future[Any]) -> None:
        """The changelog record of a write to `partition` is on its way in the transaction
        of `source`: `record` resolves to its metadata (its offset) once the broker has it."""
        self._sent.setdefault(partition, []).append((source, record))

    def persist(self, committed: Collection[TP]) -> int:
        """Write what waits of the partitions whose writes were all sent in the transactions
        of `committed` (source partitions whose transactions have just committed); returns
        how many writes went to disk. Their changelog records must have reached the broker."""
        written = 0
        for partition in list(self._pending):
            sent = self._sent.get(partition, [])
            if not sent or any(source not in committed for source, _ in sent):
                continue
            writes = self._pending.pop(partition)
            del self._sent[partition]
            offset = max(record.result().offset for _, record in sent)
            batch = WriteBatch(raw_mode=True)
            for key, value in writes.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            batch.put(self.offset_key, str(offset).encode())
            self._db_for_partition(partition).write(batch)
            written += len(writes)
        return written

    def _partition(self) -> int:
        event = current_event()
        if event is None:
            raise RuntimeError("a table write outside of an event: its partition is unknown")
        partition: int = event.message.partition
        return partition

    @override
    def _set(self, key: bytes, value: bytes | None) -> None:
        self._pending.setdefault(self._partition(), {})[key] = value

    @override
    def _del(self, key: bytes) -> None:
        self._pending.setdefault(self._partition(), {})[key] = None

    def _waiting(self, key: bytes) -> tuple[bool, bytes | None]:
        """(whether a write of `key` waits, its value)."""
        event = current_event()
        if event is not None:
            writes = self._pending.get(event.message.partition)
            if writes is not None and key in writes:
                return True, writes[key]
            return False, None
        for writes in self._pending.values():
            if key in writes:
                return True, writes[key]
        return False, None

    @override
    def _get(self, key: bytes) -> bytes | None:
        waiting, value = self._waiting(key)
        if waiting:
            return value
        found: bytes | None = super()._get(key)
        return found

    @override
    def _contains(self, key: bytes) -> bool:
        waiting, value = self._waiting(key)
        if waiting:
            return value is not None
        return bool(super()._contains(key))

    def _active_partitions(self) -> Iterator[tuple[int, Rdict]]:
        actives = self.app.assignor.assigned_actives()
        topic = self.table.changelog_topic.get_topic_name()
        for partition, db in self._dbs.items():
            if TP(topic, partition) in actives or self.table.is_global:
                yield partition, db

    @override
    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for partition, db in self._active_partitions():
            writes = self._pending.get(partition, {})
            for key, value in self._visible_items(db):
                if key not in writes:
                    yield key, value
            for key, waiting in writes.items():
                if waiting is not None:
                    yield key, waiting

    @override
    def _iterkeys(self) -> Iterator[bytes]:
        for key, _ in self._iteritems():
            yield key

    @override
    def _itervalues(self) -> Iterator[bytes]:
        for _, value in self._iteritems():
            yield value

    @override
    def _size(self) -> int:
        return sum(1 for _ in self._iteritems())

    @override
    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Standby records (and those of Faust's own restore loop), each partition's in one
        write batch with the offset of its last record (Faust's writes the offset apart)."""
        by_partition: dict[int, list[Message]] = {}
        for event in batch:
            by_partition.setdefault(event.message.partition, []).append(event.message)
        for partition, messages in by_partition.items():
            self.restore(partition, messages)

    def restore(self, partition: int, records: Sequence[Changelogged]) -> None:
        """Write changelog records of a partition, in offset order, in one write batch with
        the offset of the last."""
        writes = WriteBatch(raw_mode=True)
        for record in records:
            key = cast(bytes, record.key)  # every table's key is bytes
            if record.value is None:
                writes.delete(key)
            else:
                writes.put(key, record.value)
        writes.put(self.offset_key, str(records[-1].offset).encode())
        self._db_for_partition(partition).write(writes)

    @override
    def revoke_partitions(self, table: CollectionT, tps: set[TP]) -> None:
        # What still waits has not committed (the committer commits before partitions
        # move): its transaction aborts, and the next owner restores what did commit.
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self._pending.pop(tp.partition, None)
                self._sent.pop(tp.partition, None)
        super().revoke_partitions(table, tps)


def persist_committed(tables: Iterable[CollectionT], committed: Collection[TP]) -> None:
    """After the transactions of the source partitions `committed` have committed: every
    `Store` writes what they committed."""
    for table in tables:
        store = getattr(table, "data", None)
        if isinstance(store, Store):
            store.persist(committed)
