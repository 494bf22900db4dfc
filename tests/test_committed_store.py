"""The RocksDB store keeps a table's writes in memory until their transaction has committed,
then writes them with their changelog offset in one batch: whatever happens in between, the
files on disk hold exactly the committed writes up to the offset they hold."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
from faust.stores import by_url
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.worker.committed_store import Store
from streams.worker.event_context import event_context
from streams.worker.tables import RawTable
from tests.rocksdb_files import on_disk

PARTITIONS = 2


class Event:
    """What a store reads of the event a write belongs to: its message's partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def source(partition: int) -> TP:
    return TP("ad-requests", partition)


class Table:
    """A table on an `adstream-rocksdb://` store in `datadir`, with the writer's side of the
    commit protocol: each write's changelog record gets the partition's next offset."""

    def __init__(self, datadir: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        app = faust.App(
            "store-test", store="adstream-rocksdb://", datadir=str(datadir), Table=RawTable
        )
        self.table = app.Table("table", partitions=PARTITIONS, key_type=bytes, value_type=bytes)
        self.store: Any = self.table.data
        self.tabledir = Path(app.conf.tabledir)
        self.next_offset = dict.fromkeys(range(PARTITIONS), 0)

    def write(self, partition: int, key: bytes, value: bytes | None) -> None:
        """A write and its changelog record, sent in the transaction of `source(partition)`."""
        with event_context(Event(partition)):  # type: ignore[arg-type]
            if value is None:
                del self.store[key]
            else:
                self.store[key] = value
        record: asyncio.Future[Any] = self.loop.create_future()
        record.set_result(SimpleNamespace(offset=self.next_offset[partition]))
        self.next_offset[partition] += 2  # as if a commit marker followed each record
        self.store.sent(partition, source(partition), record)

    def read(self, partition: int, key: bytes) -> bytes | None:
        with event_context(Event(partition)):  # type: ignore[arg-type]
            value: bytes | None = self.store.get(key)
            return value

    def close(self) -> None:
        """As a SIGKILL leaves it: what waited in memory is gone (Faust's `stop` lets go of
        the databases, which close once collected)."""
        self.loop.run_until_complete(self.store.stop())


@contextmanager
def table_in_tempdir() -> Iterator[Table]:
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as datadir:
        table = Table(Path(datadir), loop)
        try:
            yield table
        finally:
            table.close()
            loop.close()


def test_the_store_url_picks_the_committed_store() -> None:
    assert by_url("adstream-rocksdb://") is Store


def test_writes_wait_in_memory_until_their_transaction_commits() -> None:
    with table_in_tempdir() as table:
        table.write(0, b"k", b"v1")
        table.write(0, b"k", b"v2")
        table.write(1, b"other", b"x")
        assert table.read(0, b"k") == b"v2"
        assert table.store.persist({source(1)}) == 1  # partition 0's transaction is open
        table.close()
        assert on_disk(table.tabledir, "table", 0) == (None, {})
        assert on_disk(table.tabledir, "table", 1) == (0, {b"other": b"x"})


def test_committed_writes_reach_disk_with_their_last_changelog_offset() -> None:
    with table_in_tempdir() as table:
        table.write(0, b"k", b"v1")
        table.write(0, b"gone", b"x")
        assert table.store.persist({source(0)}) == 2
        table.write(0, b"k", b"v2")
        table.write(0, b"gone", None)
        assert table.read(0, b"gone") is None
        assert b"gone" not in table.store
        assert table.store.persist({source(0)}) == 2
        table.write(0, b"k", b"aborted")
        table.close()
        assert on_disk(table.tabledir, "table", 0) == (6, {b"k": b"v2"})


def test_a_partition_waits_for_every_transaction_its_writes_were_sent_in() -> None:
    with table_in_tempdir() as table:
        table.write(0, b"k", b"v")
        record: asyncio.Future[Any] = table.loop.create_future()
        record.set_result(SimpleNamespace(offset=9))
        table.store.sent(0, TP("budget-leases", 0), record)
        assert table.store.persist({source(0)}) == 0
        assert table.store.persist({source(0), TP("budget-leases", 0)}) == 1
        table.close()
        assert on_disk(table.tabledir, "table", 0) == (9, {b"k": b"v"})


def test_writes_of_a_revoked_partition_are_dropped() -> None:
    with table_in_tempdir() as table:
        table.write(0, b"k", b"v")
        changelog = table.table.changelog_topic.get_topic_name()
        table.store.revoke_partitions(table.table, {TP(changelog, 0)})
        assert table.store.persist({source(0)}) == 0


def test_restored_records_are_written_with_their_offset() -> None:
    with table_in_tempdir() as table:
        records = [
            SimpleNamespace(partition=1, offset=offset, key=key, value=value)
            for offset, key, value in ((3, b"a", b"1"), (5, b"b", b"2"), (8, b"a", None))
        ]
        events = [SimpleNamespace(message=record) for record in records]
        table.store.apply_changelog_batch(events, lambda k: k, lambda v: v)
        table.close()
        assert on_disk(table.tabledir, "table", 1) == (8, {b"b": b"2"})


Step = tuple[str, int, bytes, bytes | None]
"""("write", partition, key, value or None for a delete) or ("commit", partition, ...)."""

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.integers(0, PARTITIONS - 1),
            st.sampled_from([b"a", b"b", b"c"]),
            st.one_of(st.none(), st.binary(min_size=1, max_size=3)),
        ),
        st.tuples(st.just("commit"), st.integers(0, PARTITIONS - 1), st.just(b""), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=40)  # each example opens RocksDB databases
@given(steps)
def test_disk_holds_exactly_the_committed_writes_whenever_the_worker_dies(
    plan: list[Step],
) -> None:
    with table_in_tempdir() as table:
        committed: list[dict[bytes, bytes]] = [{} for _ in range(PARTITIONS)]
        offsets: list[int | None] = [None] * PARTITIONS
        waiting: list[dict[bytes, bytes | None]] = [{} for _ in range(PARTITIONS)]
        for action, partition, key, value in plan:
            if action == "write":
                waiting[partition][key] = value
                table.write(partition, key, value)
                assert table.read(partition, key) == value
            elif waiting[partition]:
                table.store.persist({source(partition)})
                for k, v in waiting[partition].items():
                    if v is None:
                        committed[partition].pop(k, None)
                    else:
                        committed[partition][k] = v
                waiting[partition].clear()
                offsets[partition] = table.next_offset[partition] - 2
            for k in (b"a", b"b", b"c"):
                expected = waiting[partition].get(k, committed[partition].get(k))
                assert table.read(partition, k) == expected
        table.close()
        for partition in range(PARTITIONS):
            assert on_disk(table.tabledir, "table", partition) == (
                offsets[partition],
                committed[partition],
            )
