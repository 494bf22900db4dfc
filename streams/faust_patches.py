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
   first outputs were already committed (compare #606). `CommitBarrier` makes commits wait for
   the batch in progress.
3. **Buffered changelog writes can miss their transaction.** Table writes go through the
   producer's buffer, which Faust flushes before a commit only *without* transactions. The
   barrier flushes it first, so state and decisions commit together.
4. **Table writes follow `current_event()`.** A table write goes to the changelog partition
   (and RocksDB partition) of the event being processed; in a `take_events` batch that is
   whichever event came last. `event_context` names the right event for each write.
5. **`fetch_max_wait_ms` is hard-coded to 1500 ms**, which alone costs p50 ~200 ms of latency
   at moderate rates (DESIGN.md, "Performance facts"). `set_fetch_wait` replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT


def set_fetch_wait(fetch_wait_ms: int) -> None:
    """Make every Faust worker consumer created from now on use `fetch_wait_ms`."""
    thread_class: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_class, "_adstream_original_create", None)
    if original is None:
        original = thread_class._create_worker_consumer
        thread_class._adstream_original_create = original

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_wait_ms
        return consumer

    thread_class._create_worker_consumer = create


@contextlib.contextmanager
def event_context(event: EventT[Any]) -> Iterator[None]:
    """Table reads and writes inside this block belong to `event`'s partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class CommitBarrier:
    """Commits happen between batches, never inside one, and include every table write.

    Batches of both stages run concurrently (their upstream calls overlap); a commit waits
    until none is in progress, and no new batch starts while a commit waits.
    """

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._commit_done = asyncio.Event()
        self._commit_done.set()
        self._installed = False

    def install(self) -> None:
        """Wrap the app's transaction manager; call once the worker's consumer exists."""
        if self._installed:
            return
        manager: Any = self.app.consumer.transactions
        commit: Callable[..., Awaitable[bool]] = manager.commit
        producer = self.app.producer

        async def commit_between_batches(offsets: Mapping[TP, int], *args: Any, **kw: Any) -> bool:
            self._commit_done.clear()
            try:
                await self._idle.wait()
                await producer.flush()
                return await commit(offsets, *args, **kw)
            finally:
                self._commit_done.set()

        manager.commit = commit_between_batches
        self._installed = True

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        await self._commit_done.wait()
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()


class TransactionalSender:
    """Sends an output record inside the transaction of the source partition it came from."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._group_ids: dict[str, int] = {}

    def producer_for(self, source: TP) -> AIOKafkaProducer:
        group = self._group_ids.get(source.topic)
        if group is None:
            group = self._group_ids[source.topic] = self.app.assignor.group_for_topic(source.topic)
        transactional_id = f"{self.app.conf.id}-{group}-{source.partition}"
        manager: Any = self.app.consumer.transactions
        producer: AIOKafkaProducer | None = manager.producer._transaction_producers.get(
            transactional_id
        )
        if producer is None:
            raise RuntimeError(f"no transaction open for {source} ({transactional_id})")
        return producer

    async def send(
        self, source: TP, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int
    ) -> asyncio.Future[Any]:
        """Queue one record; the returned future resolves once the broker has it."""
        future: asyncio.Future[Any] = await self.producer_for(source).send(
            topic, value=value, key=key, timestamp_ms=timestamp_ms
        )
        return future
