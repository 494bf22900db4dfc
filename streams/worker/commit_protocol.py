"""How a batch's outputs, table writes and offsets commit together, in one Kafka transaction.

faust-streaming 0.15.3's `processing_guarantee="exactly_once"` falls short in ways that break
adstream's invariants; each was read in Faust's source and is covered by our tests. The items
are numbered across the modules that fix them (`streams.worker.event_context` 6,
`streams.worker.skipped_events` 5 and 11, `streams.worker.kafka_transport` 7 to 9,
`streams.worker.recovery` 10 and 12, `streams.worker.committed_store` 13). Here, the commit
protocol:

1. **Outputs join the wrong transaction.** Faust picks a send's transactional producer by the
   *destination* partition (`TransactionManager.send`). A decision for source partition 3 sent
   to `ad-served` partition 5 lands in partition 5's transaction, or in none at all for a topic
   the worker does not consume (faust-streaming #323, #517). `TransactionalSender` puts every
   output into the transaction of the source partition whose offset commits it.
2. **Commits can split a batch.** The commit timer may end a transaction while an event's
   outputs are half sent and before the event is acked; a crash then replays an event whose
   first outputs were already committed (compare #606).
3. **Buffered changelog writes can miss their transaction.** Table writes go through the
   producer's buffer, which Faust flushes before a commit only *without* transactions.
   adstream's tables (`streams.worker.tables.TypedTable`) send their changelog records themselves,
   through `TransactionalSender`; the commit still flushes Faust's buffer for anything else.
4. **Offsets after a restart may never commit.** Faust finds the offset to commit by looking
   for consecutive acked offsets; transaction markers leave holes in a partition's offsets,
   and after a restart a hole next to the committed offset stalls that partition's commits
   for good: its transaction stays open and read_committed readers see nothing more.

   `Committer` takes over Faust's commit (the consumer's `force_commit`, which every commit
   path goes through, hands it over: `streams.worker.kafka_transport.Consumer`): stages report
   the offsets they have finished, a commit waits until no batch is in progress, flushes the
   producer's buffer, and commits exactly those offsets in the transactions of their
   partitions. Outputs, table writes and offsets commit together, and only then do the
   table writes reach the local store's disk (`streams.worker.committed_store`). While more
   than a batch of events waits, the timer's commits come less often: each costs a few
   broker round trips per partition (at 50 ms, ~15-20% of a busy worker's CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP

from streams.worker.committed_store import persist_committed
from streams.worker.kafka_transport import Consumer
from streams.worker.skipped_events import SkippedEvents


class Committer:
    """Commits between batches, never inside one: finished offsets, outputs and table writes
    in one transaction per source partition.

    Batches of both stages run concurrently (their upstream calls overlap); a commit waits
    until none is in progress, and no new batch starts while a commit waits.
    """

    def __init__(
        self,
        app: faust.App,
        sender: TransactionalSender,
        skipped: SkippedEvents,
        *,
        behind_interval_s: float,
        behind_lag: int,
    ) -> None:
        """`behind_interval_s`: the least time between Faust's commits while more than
        `behind_lag` events wait in the partitions this worker has processed."""
        self.app = app
        self.sender = sender
        self.transactions = sender.transactions
        self.skipped = skipped
        self.behind_interval_s = behind_interval_s
        self.behind_lag = behind_lag
        self._last_commit = 0.0
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
        consumer = self.app.consumer
        if not isinstance(consumer, Consumer):
            raise TypeError(
                f"the app's consumer is a {type(consumer)}, not a {Consumer}: "
                "its broker must be `streams.worker.kafka_transport.broker_url`'s"
            )
        consumer.commit_with(self._faust_commit)
        self.app.on_partitions_revoked.connect(self._commit_revoked)
        self._installed = True

    def committed(self) -> dict[TP, int]:
        """The offset committed last in each partition (the next one to process)."""
        return dict(self._committed)

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

    async def _faust_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """A commit Faust asks for (its commit timer, mostly). While the worker is behind,
        the timer's commits are spaced `behind_interval_s` apart: transactions cost CPU per
        partition, and decisions then wait in the backlog longer than that anyway."""
        if (
            start_new_transaction
            and time.monotonic() < self._last_commit + self.behind_interval_s
            and self._lag() > self.behind_lag
        ):
            return False
        return await self.commit(topics, start_new_transaction)

    def _lag(self) -> int:
        """Events waiting in the partitions this worker has processed events of."""
        consumer: Any = self.app.consumer
        lag = 0
        for tp, offset in self._finished.items():
            end = consumer.highwater(tp)
            if end is not None and end > offset:
                lag += end - offset
        return lag

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        async with self._alone():
            await self.app.producer.flush()
            committed = await self._commit(start_new_transaction)
            self.ended_cleanly = not start_new_transaction
            self._last_commit = time.monotonic()
            return committed

    async def _commit(self, start_new_transaction: bool) -> bool:
        consumer: Any = self.app.consumer
        assigned = consumer.assignment()
        # A partition whose offsets stand still may still have sent records (a request held
        # back waits for a lease whose ask it sent): its transaction must end too.
        offsets = {
            tp: offset
            for tp, offset in self._finished.items()
            if tp in assigned and (offset > self._committed.get(tp, -1) or tp in self.sender.sent)
        }
        self.sender.sent.clear()
        if not offsets:
            return False
        by_transaction: dict[str, dict[TP, int]] = {}
        for tp, offset in offsets.items():
            by_transaction.setdefault(self.transactions.id_for(tp), {})[tp] = offset
        # Each source partition has a producer and a transaction of its own: ending them one
        # after another (as Faust does) costs a few broker round trips per partition while
        # every batch waits, so they end side by side.
        await asyncio.gather(
            *(
                self._end_transaction(transactional_id, partition_offsets, start_new_transaction)
                for transactional_id, partition_offsets in by_transaction.items()
            )
        )
        # Only now may the local store keep the tables' writes: their changelog records
        # have committed (a crash before this line leaves them to the restore).
        persist_committed(self.app.tables.values(), offsets)
        self._committed.update(offsets)
        # Faust's stall monitor reads its own commit times: without these, a worker that
        # has run `stall_warning_s` logs "Has not committed" errors many times a second.
        consumer._thread.tp_last_committed_at.update(dict.fromkeys(offsets, time.monotonic()))
        for tp, offset in offsets.items():
            # Faust's own bookkeeping of acks and offset gaps would otherwise grow without end.
            consumer._acked[tp].clear()
            consumer._acked_index[tp].clear()
            consumer._gap[tp].clear()
            consumer._committed_offset[tp] = offset
        return True

    async def _end_transaction(
        self, transactional_id: str, offsets: dict[TP, int], start_new_transaction: bool
    ) -> None:
        """Commit one source partition's transaction: its outputs, table writes and `offsets`."""
        producer = self.app.consumer.transactions.producer
        await producer.commit_transactions(
            {transactional_id: offsets},
            self.app.conf.id,
            start_new_transaction=start_new_transaction,
        )

    async def _commit_revoked(self, app: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        """Commit what was done before partitions move: Faust has waited for the batches in
        progress, and the partitions' transactions end (aborting what is open) right after."""
        (revoked,) = args
        await self.commit()
        self.skipped.forget(revoked)
        for tp in revoked:
            self._finished.pop(tp, None)
            self._committed.pop(tp, None)


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
        self.sent: set[TP] = set()
        """Source partitions whose transactions hold records since their last commit."""

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
        self.sent.add(source)
        return future
