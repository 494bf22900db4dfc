"""What adstream changes in faust-streaming 0.15.3, in one place, and why.

faust-streaming's `processing_guarantee="exactly_once"` falls short in ways that break
adstream's invariants (each was read in Faust's source and is covered by our tests):

1. **Outputs join the wrong transaction.** Faust picks a send's transactional producer by the
   *destination* partition (`TransactionManager.send`). A decision for source partition 3 sent
   to `ad-served` partition 5 lands in partition 5's transaction, or in none at all for a topic
   the worker does not consume (faust-streaming #323, #517). `send` below puts every output
   into the transaction of the source partition whose offset commits it.
2. **Commits can split a batch.** The commit timer may end a transaction while an event's
   outputs are half sent and before the event is acked; a crash then replays an event whose
   first outputs were already committed (compare #606).
3. **Buffered changelog writes can miss their transaction.** Table writes go through the
   producer's buffer, which Faust flushes before a commit only *without* transactions.
   adstream's tables (`streams.tables.TypedTable`) send their changelog records themselves,
   through `TransactionalSender`; the commit still flushes Faust's buffer for anything else.
4. **Offsets after a restart may never commit.** Faust finds the offset to commit by looking
   for consecutive acked offsets; transaction markers leave holes in a partition's offsets,
   and after a restart a hole next to the committed offset stalls that partition's commits
   for good: its transaction stays open and read_committed readers see nothing more.

   `Committer` replaces Faust's commit (`Consumer.force_commit`, which every commit path
   goes through): stages report the offsets they have finished, a commit waits until no batch
   is in progress, flushes the producer's buffer, and commits exactly those offsets in the
   transactions of their partitions. Outputs, table writes and offsets commit together.
5. **Events can be skipped and acked unseen.** A stream drops (and acks) events it fetched
   while its flow was paused or under an older consumer generation, expecting them to be
   fetched again; right after start-up they are not, and a SIGKILL test lost dozens of events
   this way. Faust skips only around start-up and rebalances, so for `SETTLE_S` after each
   assignment `SkippedEvents` checks every hole in a batch's offsets against the log (holes of
   transaction markers are normal) and hands back, in order, the records Faust dropped.
6. **Table writes follow `current_event()`.** A table write goes to the changelog partition
   (and RocksDB partition) of the event being processed; in a `take_events` batch that is
   whichever event came last. `event_context` names the right event for each store access,
   and `TypedTable` writes name their event explicitly.
7. **`fetch_max_wait_ms` is hard-coded to 1500 ms**, which alone costs p50 ~200 ms of latency
   at moderate rates (DESIGN.md, "Performance facts"), and the producers' `retry_backoff_ms`
   stays at aiokafka's 100 ms: the first send of a transaction begun right after a commit is
   often refused as retriable by Kafka 4, and each such retry cost a batch 100 ms.
   `tune_clients` sets both.
8. **Moved tables were never restored.** With transactions, Faust takes a changelog
   partition's highwater from aiokafka's cached last stable offset, which stays empty until
   that partition has been fetched: every partition new to a worker had highwater -1, so
   recovery read nothing, and a worker taking over partitions (scale-out, a crashed peer)
   decided on empty tables (caps, budgets and dedupe forgotten; `tests/scale`, scenario
   `scale_out`). A partition it had owned before could crash it with a `ConsistencyError`.
   `tune_clients` asks the broker instead: a read_committed consumer's end offsets are the
   last stable offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message

log = logging.getLogger(__name__)


def tune_clients(*, fetch_wait_ms: int, retry_backoff_ms: int) -> None:
    """Make every Faust consumer and producer created from now on use these settings."""
    thread_class: Any = faust_aiokafka.AIOKafkaConsumerThread
    create_consumer = _original(thread_class, "_create_worker_consumer")

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create_consumer(self, transport)
        consumer._fetch_max_wait_ms = fetch_wait_ms
        return consumer

    thread_class._create_worker_consumer = create_worker_consumer

    async def highwaters(self: Any, partitions: list[TP]) -> Mapping[TP, int]:
        # Our consumer reads read_committed: its end offsets are the last stable offsets.
        offsets: Mapping[TP, int] = await self._ensure_consumer().end_offsets(partitions)
        return offsets

    thread_class._highwaters = highwaters

    producer_class: Any = faust_aiokafka.Producer
    producer_settings = _original(producer_class, "_settings_default")

    def settings_default(self: Any) -> Mapping[str, Any]:
        return {**producer_settings(self), "retry_backoff_ms": retry_backoff_ms}

    producer_class._settings_default = settings_default


def _original(cls: Any, name: str) -> Any:
    """The method as Faust shipped it, however often the patch is applied."""
    saved = f"_adstream_original_{name}"
    if not hasattr(cls, saved):
        setattr(cls, saved, getattr(cls, name))
    return getattr(cls, saved)


@contextlib.contextmanager
def event_context(event: EventT[Any]) -> Iterator[None]:
    """Table reads and writes inside this block belong to `event`'s partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class Committer:
    """Commits between batches, never inside one: finished offsets, outputs and table writes
    in one transaction per source partition.

    Batches of both stages run concurrently (their upstream calls overlap); a commit waits
    until none is in progress, and no new batch starts while a commit waits.
    """

    def __init__(
        self, app: faust.App, transactions: TransactionIds, skipped: SkippedEvents
    ) -> None:
        self.app = app
        self.transactions = transactions
        self.skipped = skipped
        self._finished: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        # A readers-writer lock: batches share it, a commit takes it alone. The predicates
        # are re-checked under the condition's lock after every wake-up: an Event would let
        # a batch woken by one commit's end slip into the next commit.
        self._turns = asyncio.Condition()
        self._active = 0
        self._committing = False
        self._installed = False
        self.ended_cleanly = False
        """Set once the final commit at shutdown (Faust ends the transactions) succeeded."""

    def install(self) -> None:
        """Take over the app's consumer's commits; call once the worker's consumer exists."""
        if self._installed:
            return
        consumer: Any = self.app.consumer
        consumer.force_commit = self.commit
        self.app.on_partitions_revoked.connect(self._commit_revoked)
        self._installed = True

    def finished(self, tp: TP, offset: int) -> None:
        """A batch is done with `offset` of `tp` (and everything before it)."""
        if offset >= self._finished.get(tp, -1):
            self._finished[tp] = offset + 1

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        async with self._turns:
            await self._turns.wait_for(lambda: not self._committing)
            self._active += 1
        try:
            yield
        finally:
            async with self._turns:
                self._active -= 1
                self._turns.notify_all()

    @contextlib.asynccontextmanager
    async def _alone(self) -> AsyncIterator[None]:
        async with self._turns:
            await self._turns.wait_for(lambda: not self._committing)
            self._committing = True
            await self._turns.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            async with self._turns:
                self._committing = False
                self._turns.notify_all()

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        async with self._alone():
            await self.app.producer.flush()
            committed = await self._commit(start_new_transaction)
            self.ended_cleanly = not start_new_transaction
            return committed

    async def _commit(self, start_new_transaction: bool) -> bool:
        consumer: Any = self.app.consumer
        assigned = consumer.assignment()
        offsets = {
            tp: offset
            for tp, offset in self._finished.items()
            if tp in assigned and offset > self._committed.get(tp, -1)
        }
        if not offsets:
            return False
        by_transaction: dict[str, dict[TP, int]] = {}
        for tp, offset in offsets.items():
            by_transaction.setdefault(self.transactions.id_for(tp), {})[tp] = offset
        # Each source partition has a producer and a transaction of its own: ending them one
        # after another (as Faust does) costs a few broker round trips per partition while
        # every batch waits, so they end side by side.
        producer = consumer.transactions.producer
        await asyncio.gather(
            *(
                producer.commit_transactions(
                    {transactional_id: partition_offsets},
                    self.app.conf.id,
                    start_new_transaction=start_new_transaction,
                )
                for transactional_id, partition_offsets in by_transaction.items()
            )
        )
        self._committed.update(offsets)
        for tp, offset in offsets.items():
            # Faust's own bookkeeping of acks and offset gaps would otherwise grow without end.
            consumer._acked[tp].clear()
            consumer._acked_index[tp].clear()
            consumer._gap[tp].clear()
            consumer._committed_offset[tp] = offset
        return True

    async def _commit_revoked(self, app: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        """Commit what was done before partitions move: Faust has waited for the batches in
        progress, and the partitions' transactions end (aborting what is open) right after."""
        (revoked,) = args
        await self.commit()
        self.skipped.forget(revoked)
        for tp in revoked:
            self._finished.pop(tp, None)
            self._committed.pop(tp, None)


SETTLE_S = 30.0
"""How long after an assignment holes in a partition's offsets are checked against the log."""


class SkippedEvents:
    """Finds the events Faust skipped within a partition and gives them back in order."""

    def __init__(self, app: faust.App, bootstrap_servers: str) -> None:
        self.app = app
        self.bootstrap_servers = bootstrap_servers
        self._next: dict[TP, int] = {}
        self._check_until: dict[TP, float] = {}
        self._reader: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        app.on_partitions_assigned.connect(self._assigned)

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions moved (or were sought back to their committed offsets)."""
        for tp in partitions:
            self._next.pop(tp, None)

    async def _assigned(self, app: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        (assigned,) = args
        self.forget(assigned)
        until = time.monotonic() + SETTLE_S
        self._check_until.update(dict.fromkeys(assigned, until))

    async def complete(self, events: Sequence[EventT[Any]]) -> list[EventT[Any]]:
        """`events` with whatever Faust skipped before each of them put back in place."""
        completed: list[EventT[Any]] = []
        for event in events:
            message = event.message
            expected = self._expected(message.tp)
            if (
                expected is not None
                and message.offset > expected
                and time.monotonic() < self._check_until.get(message.tp, math.inf)
            ):
                completed += await self._skipped(message.tp, expected, message.offset)
            if expected is None or message.offset >= expected:
                self._next[message.tp] = message.offset + 1
                completed.append(event)
        return completed

    def _expected(self, tp: TP) -> int | None:
        known = self._next.get(tp)
        if known is None:
            consumer: Any = self.app.consumer
            known = consumer._committed_offset.get(tp)
        return known

    async def _skipped(self, tp: TP, start: int, end: int) -> list[EventT[Any]]:
        """The data records in [start, end) of `tp`, as events: none for a hole that holds
        only transaction markers or aborted records."""
        async with self._lock:
            reader = await self._open()
            reader.assign([tp])
            reader.seek(tp, start)
            records: list[Any] = []
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=1000, max_records=end - start)
                records += [r for r in batch.get(tp, []) if r.offset < end]
                if not batch:
                    break
        if records:
            log.warning(
                "Faust skipped %d events of %s in [%d, %d): processing them now",
                len(records), tp, start, end,
            )  # fmt: skip
        return [self._event(tp, record) for record in records]

    async def _open(self) -> AIOKafkaConsumer:
        if self._reader is None:
            self._reader = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                isolation_level="read_committed",
                enable_auto_commit=False,
            )
            await self._reader.start()
        return self._reader

    def _event(self, tp: TP, record: Any) -> EventT[Any]:
        message = Message(
            tp.topic, tp.partition, record.offset, record.timestamp / 1000.0,
            record.timestamp_type, record.headers, record.key, record.value, record.checksum,
            tp=tp,
        )  # fmt: skip
        return self.app.create_event(record.key, record.value, record.headers, message)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()


class TransactionIds:
    """Faust's transactional id of a source partition: `<app id>-<topic group>-<partition>`."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    def id_for(self, source: TP) -> str:
        group = self.app.assignor.group_for_topic(source.topic)
        return f"{self.app.conf.id}-{group}-{source.partition}"


class TransactionalSender:
    """Sends an output record inside the transaction of the source partition it came from."""

    def __init__(self, app: faust.App, transactions: TransactionIds) -> None:
        self.app = app
        self.transactions = transactions

    def producer_for(self, source: TP) -> AIOKafkaProducer:
        transactional_id = self.transactions.id_for(source)
        manager: Any = self.app.consumer.transactions
        producer: AIOKafkaProducer | None = manager.producer._transaction_producers.get(
            transactional_id
        )
        if producer is None:
            raise RuntimeError(f"no transaction open for {source} ({transactional_id})")
        return producer

    async def send(
        self,
        source: TP,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one record (to `partition`, or the key's); the returned future resolves once
        the broker has it."""
        future: asyncio.Future[Any] = await self.producer_for(source).send(
            topic, value=value, key=key, partition=partition, timestamp_ms=timestamp_ms
        )
        return future
