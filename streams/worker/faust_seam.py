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
   adstream's tables (`streams.worker.tables.TypedTable`) send their changelog records themselves,
   through `TransactionalSender`; the commit still flushes Faust's buffer for anything else.
4. **Offsets after a restart may never commit.** Faust finds the offset to commit by looking
   for consecutive acked offsets; transaction markers leave holes in a partition's offsets,
   and after a restart a hole next to the committed offset stalls that partition's commits
   for good: its transaction stays open and read_committed readers see nothing more.

   `Committer` replaces Faust's commit (`Consumer.force_commit`, which every commit path
   goes through): stages report the offsets they have finished, a commit waits until no batch
   is in progress, flushes the producer's buffer, and commits exactly those offsets in the
   transactions of their partitions. Outputs, table writes and offsets commit together.
   While more than a batch of events waits, the timer's commits come less often: each costs
   a few broker round trips per partition (at 50 ms, ~15-20% of a busy worker's CPU).
5. **Events can be skipped and acked unseen.** A stream drops (and acks) events it fetched
   while its flow was paused or under an older consumer generation, expecting them to be
   fetched again; right after start-up they are not, and a SIGKILL test lost dozens of events
   this way. Faust skips only around start-up and rebalances, so for `SETTLE_S` after each
   assignment and after each recovery ends `SkippedEvents` checks every hole in a batch's
   offsets against the log (holes of transaction markers are normal) and hands back, in order,
   the records Faust dropped. Items 9 and 11 now fetch such records again where Faust drops
   them; this check stays as the net under them. (Counted from the assignment alone, the
   window had closed before the streams resumed after a restore of a million keys, which
   takes minutes; the requests published meanwhile stayed undecided.)
6. **Table writes follow `current_event()`.** A table write goes to the changelog partition
   (and RocksDB partition) of the event being processed; in a `take_events` batch that is
   whichever event came last. `event_context` names the right event for each store access,
   and `TypedTable` writes name their event explicitly.
7. **`fetch_max_wait_ms` is hard-coded to 1500 ms**, which alone costs p50 ~200 ms of latency
   at moderate rates (docs/architecture.md, "Performance facts"), and the producers'
   `retry_backoff_ms` stays at aiokafka's 100 ms: the first send of a transaction begun right
   after a commit is often refused as retriable by Kafka 4, and each such retry cost a batch 100 ms.
   `tune_clients` sets both.
8. **Moved tables were never restored.** With transactions, Faust takes a changelog
   partition's highwater from aiokafka's cached last stable offset, which stays empty until
   that partition has been fetched: every partition new to a worker had highwater -1, so
   recovery read nothing, and a worker taking over partitions (scale-out, a crashed peer)
   decided on empty tables (caps, budgets and dedupe forgotten; `tests/scale`, scenario
   `scale_out`). A partition it had owned before could crash it with a `ConsistencyError`.
   `tune_clients` asks the broker instead: a read_committed consumer's end offsets are the
   last stable offsets.
9. **Fetched records were dropped unseen, for good.** Faust hands aiokafka its *live* set of
   active partitions; a rebalance empties it while a fetch waits, and aiokafka reads an
   empty set as "every partition": it returned the records of paused changelog partitions
   (advancing their positions), and Faust, whose flow had stopped, dropped them. Faust also
   drops a fetched batch's rest when its flow stops or the generation changes mid-batch, and
   records of partitions paused meanwhile, without ever fetching them again (it seeks stream
   partitions back to their committed offsets, and only when its flow stopped). When the
   fetch straddled a recovery's seek, the recovery of those changelog partitions read
   nothing (`tests/scale` `scale_out`: a moved campaign's rules, caps and spend were gone).
   `keep_fetched_records` fetches exactly the partitions asked for, and seeks a partition
   back to the first record Faust did not deliver, unless a seek has moved it since.
10. **Restores waited 10 s, then could skip what they had not read.** Faust restores a
   changelog partition up to its end offset minus one, but a transactional changelog ends
   with a commit marker (often after aborted records) that no consumer is handed: recovery
   never got there, and after 10 s without changelog events it assumed an aborted
   transaction and jumped to the end whether or not it had read the records before it.
   `tune_clients` gives recovery the offset after each partition's last committed record
   (`changelog_ends`), so a restore ends as soon as it has read everything, and
   `check_restores` makes a worker whose restore missed records exit (status 70) before any
   stream resumes, instead of deciding on tables with holes. It also turns off Faust's guess
   at aborted transactions, which marks a partition restored once its fetch position reaches
   the highwater: made for a highwater on a commit marker, it skipped the last committed
   record, and it fires on the first 5 s tick of a recovery when the changelog queue was idle
   for 10 s before it (the counter is never reset), often before the first fetch
   (`tests/scale` `scale_out`: "Aborted tx until highwater" 17 ms into a recovery, then a
   restore that had read nothing).
11. **Events cleared from Faust's queues were never fetched again.** Each time Faust resumes
   its flow (at the end of every recovery) it clears its stream queues, after seeking the
   stream partitions to their committed offsets: what the fetcher delivered in between was
   gone, and `SkippedEvents` found the hole only when a later event of that partition came;
   at a partition's tail none came and the worker sat idle, undecided requests and all
   (`tests/scale` `broker_restart`, a worker restarted after a crash during the outage).
   `SkippedEvents.install` seeks partitions back to the first event cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.streams import _current_event
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message

log = logging.getLogger(__name__)

FAILED_EXIT = 70
"""The worker's exit status when it cannot go on safely (a stage failed mid-batch, a restore
missed changelog records): a supervisor restarts it, and it starts over as after a crash."""


def tune_clients(*, fetch_wait_ms: int, retry_backoff_ms: int, bootstrap_servers: str) -> None:
    """Make every Faust consumer and producer created from now on use these settings."""
    thread_class: Any = faust_aiokafka.AIOKafkaConsumerThread
    create_consumer = _original(thread_class, "_create_worker_consumer")

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create_consumer(self, transport)
        consumer._fetch_max_wait_ms = fetch_wait_ms
        return consumer

    thread_class._create_worker_consumer = create_worker_consumer

    async def highwaters(self: Any, partitions: list[TP]) -> Mapping[TP, int]:
        # Our consumer reads read_committed: its end offsets are the last stable offsets
        # (item 8); recovery reads up to the last record before them (item 10).
        offsets: Mapping[TP, int] = await self._ensure_consumer().end_offsets(partitions)
        return await changelog_ends(bootstrap_servers, offsets)

    thread_class._highwaters = highwaters

    producer_class: Any = faust_aiokafka.Producer
    producer_settings = _original(producer_class, "_settings_default")

    def settings_default(self: Any) -> Mapping[str, Any]:
        return {**producer_settings(self), "retry_backoff_ms": retry_backoff_ms}

    producer_class._settings_default = settings_default


def keep_fetched_records() -> None:
    """Item 9: records Faust fetched but did not deliver are fetched again."""
    thread_class: Any = faust_aiokafka.AIOKafkaConsumerThread
    fetch_records = _original(thread_class, "_fetch_records")

    async def fetch_asked_records(
        self: Any,
        consumer: AIOKafkaConsumer,
        active_partitions: set[TP] | None,
        timeout: float | None = None,  # noqa: ASYNC109 (Faust's signature)
        max_records: int | None = None,
    ) -> Mapping[TP, list[Any]]:
        if active_partitions is None:  # a client-only app: every partition
            return await fetch_records(self, consumer, None, timeout, max_records)  # type: ignore[no-any-return]
        # Faust passes its live set of active partitions, which rebalances and recoveries
        # change while the fetch waits; aiokafka reads an empty set as "every partition".
        asked = set(active_partitions)
        if not asked:
            return {}
        records = await fetch_records(self, consumer, asked, timeout, max_records)
        return Fetched(records, {tp: _position(consumer, tp) for tp in records})

    thread_class._fetch_records = fetch_asked_records

    consumer_class: Any = faust_consumer.Consumer
    wait_next_records = _original(consumer_class, "_wait_next_records")
    getmany = _original(consumer_class, "getmany")

    async def wait_next_records_kept(self: Any, timeout: float) -> Any:  # noqa: ASYNC109
        records, active_partitions = await wait_next_records(self, timeout)
        self._adstream_fetched = records
        return records, active_partitions

    async def getmany_giving_back(
        self: Any,
        timeout: float,  # noqa: ASYNC109 (Faust's signature)
    ) -> AsyncIterator[tuple[TP, Any]]:
        self._adstream_fetched = None
        delivered: dict[TP, int] = {}
        try:
            async for tp, message in getmany(self, timeout):
                delivered[tp] = message.offset
                yield tp, message
        finally:
            fetched, self._adstream_fetched = self._adstream_fetched, None
            undelivered = fetched.undelivered(delivered) if isinstance(fetched, Fetched) else {}
            if undelivered:
                log.info("Faust dropped fetched records, fetching them again from %s", undelivered)
                thread = self._thread
                await thread.call_thread(give_back, thread._ensure_consumer(), undelivered)

    consumer_class._wait_next_records = wait_next_records_kept
    consumer_class.getmany = getmany_giving_back


class Fetched(dict[TP, list[Any]]):
    """Records aiokafka handed to Faust, with each partition's position right after them."""

    def __init__(self, records: Mapping[TP, list[Any]], positions: Mapping[TP, int | None]):
        super().__init__(records)
        self.positions = positions

    def undelivered(self, delivered: Mapping[TP, int]) -> dict[TP, tuple[int, int]]:
        """Partition -> (first record not delivered, the position after the fetch)."""
        back = {}
        for tp, records in self.items():
            last = delivered.get(tp)
            rest = [r.offset for r in records if last is None or r.offset > last]
            position = self.positions.get(tp)
            if rest and position is not None:
                back[tp] = (rest[0], position)
        return back


async def give_back(consumer: AIOKafkaConsumer, undelivered: Mapping[TP, tuple[int, int]]) -> None:
    """In the consumer's thread: fetch the records again, unless a seek has moved the
    partition since (a recovery or a seek to the committed offset knows better)."""
    for tp, (offset, position) in undelivered.items():
        if _position(consumer, tp) == position:
            consumer.seek(tp, offset)


async def rewind(consumer: AIOKafkaConsumer, offsets: Mapping[TP, int]) -> None:
    """In the consumer's thread: move partitions back to `offsets`, never forward (a seek
    since may have gone further back already)."""
    for tp, offset in offsets.items():
        position = _position(consumer, tp)
        if position is not None and offset < position:
            consumer.seek(tp, offset)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not fetch cleared events again", exc_info=future.exception())


def _position(consumer: AIOKafkaConsumer, tp: TP) -> int | None:
    """aiokafka's fetch position of an assigned partition (None if it has none)."""
    subscription = consumer._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    state = None if assignment is None else assignment.state_value(tp)
    return None if state is None else state._position


async def changelog_ends(bootstrap_servers: str, ends: Mapping[TP, int]) -> dict[TP, int]:
    """Item 10: for each partition, the offset just after its last committed record below
    `ends` (its last stable offset), or its log start offset if it holds none.

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


def check_restores() -> None:
    """Item 10: a restore that did not read every record up to a partition's end never
    completes: the worker exits instead, before any stream resumes."""
    recovery_class: Any = Recovery
    seek_offsets = _original(recovery_class, "_seek_offsets")
    completed = _original(recovery_class, "on_recovery_completed")
    collection_class: Any = Collection
    on_changelog_event = _original(collection_class, "on_changelog_event")

    async def seek_offsets_noted(
        self: Any, consumer: Any, tps: set[TP], offsets: Mapping[TP, int], title: str
    ) -> None:
        if title == "active":
            # The last offset each table already holds (-1: none); reading goes on from it.
            self._adstream_read = {tp: offsets[tp] for tp in tps}
        await seek_offsets(self, consumer, tps, offsets, title)

    async def on_changelog_event_noted(self: Any, event: EventT[Any]) -> None:
        read = getattr(self.app.tables.recovery, "_adstream_read", None)
        message = event.message
        if read is not None and message.offset > read.get(message.tp, math.inf):
            read[message.tp] = message.offset
        await on_changelog_event(self, event)

    async def on_recovery_completed_checked(self: Any, generation_id: int = 0) -> None:
        read: Mapping[TP, int] = getattr(self, "_adstream_read", {})
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
        await completed(self, generation_id)

    async def no_position(self: Any, tp: TP) -> int:
        # Only the aborted-transaction guess asks (faust/tables/recovery.py); it jumps when
        # the position is at or past the highwater, which -1 never is.
        return -1

    recovery_class._seek_offsets = seek_offsets_noted
    recovery_class.on_recovery_completed = on_recovery_completed_checked
    collection_class.on_changelog_event = on_changelog_event_noted
    faust_consumer.ThreadDelegateConsumer.position = no_position  # type: ignore[method-assign]


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
        self,
        app: faust.App,
        transactions: TransactionIds,
        skipped: SkippedEvents,
        *,
        behind_interval_s: float,
        behind_lag: int,
    ) -> None:
        """`behind_interval_s`: the least time between Faust's commits while more than
        `behind_lag` events wait in the partitions this worker has processed."""
        self.app = app
        self.transactions = transactions
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
        consumer: Any = self.app.consumer
        consumer.force_commit = self._faust_commit
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
        self._installed = False
        app.on_partitions_assigned.connect(self._assigned)

    def install(self) -> None:
        """Fetch again what Faust clears from its queues (item 11); call once the worker's
        consumer exists, before its first assignment."""
        if self._installed:
            return
        flow_control: Any = self.app.flow_control
        clear = flow_control.clear

        def clear_and_give_back() -> None:
            cleared: dict[TP, int] = {}
            for queue in list(flow_control._queues):
                for item in list(queue._queue):
                    message = getattr(item, "message", None)
                    if isinstance(message, Message):
                        tp, offset = message.tp, message.offset
                        cleared[tp] = min(cleared.get(tp, offset), offset)
            clear()
            # Faust drops what it fetched while its flow stood still, and a recovery can
            # outlast the window an assignment opened (a million keys restore for minutes).
            self._watch(list(self._check_until))
            if cleared:
                self._give_back(cleared)

        flow_control.clear = clear_and_give_back
        self._installed = True

    def _give_back(self, cleared: Mapping[TP, int]) -> None:
        consumer: Any = self.app.consumer
        read_offsets = consumer._read_offset
        # Faust delivers no offset below a partition's read offset: lower it first. Only for
        # partitions Faust reads (being revoked, a partition has none).
        wanted = {tp: offset for tp, offset in cleared.items() if tp in read_offsets}
        if not wanted:
            return
        for tp, offset in wanted.items():
            known = read_offsets[tp]
            read_offsets[tp] = None if known is None else min(known, offset)
        log.info("Faust cleared queued events, fetching them again from %s", wanted)
        thread = consumer._thread
        future = asyncio.ensure_future(
            thread.call_thread(rewind, thread._ensure_consumer(), wanted)
        )
        future.add_done_callback(_log_failure)

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions moved (or were sought back to their committed offsets)."""
        for tp in partitions:
            self._next.pop(tp, None)

    async def _assigned(self, app: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        (assigned,) = args
        self.forget(assigned)
        self._watch(assigned)

    def _watch(self, partitions: Iterable[TP]) -> None:
        """Check holes in these partitions' offsets for the next `SETTLE_S`."""
        until = time.monotonic() + SETTLE_S
        self._check_until.update(dict.fromkeys(partitions, until))

    def watching(self, tp: TP) -> bool:
        return time.monotonic() < self._check_until.get(tp, math.inf)

    async def complete(self, events: Sequence[EventT[Any]]) -> list[EventT[Any]]:
        """`events` with whatever Faust skipped before each of them put back in place."""
        completed: list[EventT[Any]] = []
        for event in events:
            message = event.message
            expected = self._expected(message.tp)
            if expected is not None and message.offset > expected and self.watching(message.tp):
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


async def learn_partitions(app: faust.App, topic: str) -> None:
    """Make the app's producer ask the broker where `topic`'s partitions are. Faust routes a
    table request (`app.table_route`) by the changelog topic's partitions as its producer
    knows them; on a fresh broker it has never asked, and every routed request fails."""
    producer = cast(Any, app.producer)._ensure_producer()
    await producer.partitions_for(topic)


def fetch_positions(app: faust.App, topics: Iterable[str]) -> dict[TP, int | None]:
    """The fetch position of each assigned partition of `topics`, without waiting (None where
    it has none yet): Faust's `position` waits for one, which would hang a scrape during a
    restore."""
    consumer: Any = app.consumer
    kafka_consumer = consumer._thread._ensure_consumer()
    wanted = set(topics)
    return {tp: _position(kafka_consumer, tp) for tp in consumer.assignment() if tp.topic in wanted}
