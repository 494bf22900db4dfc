"""Events Faust skips or clears, found and processed after all (faust-streaming 0.15.3).

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
11. **Events cleared from Faust's queues were never fetched again.** Each time Faust resumes
   its flow (at the end of every recovery) it clears its stream queues, after seeking the
   stream partitions to their committed offsets: what the fetcher delivered in between was
   gone, and `SkippedEvents` found the hole only when a later event of that partition came;
   at a partition's tail none came and the worker sat idle, undecided requests and all
   (`tests/scale` `broker_restart`, a worker restarted after a crash during the outage).
   `SkippedEvents.install` seeks partitions back to the first event cleared.

(Items 1 to 4 are `streams.worker.commit_protocol`'s, 9 `streams.worker.kafka_transport`'s.)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.types import TP, EventT, Message

from streams.worker.kafka_transport import fetch_position

log = logging.getLogger(__name__)


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


async def rewind(consumer: AIOKafkaConsumer, offsets: Mapping[TP, int]) -> None:
    """In the consumer's thread: move partitions back to `offsets`, never forward (a seek
    since may have gone further back already)."""
    for tp, offset in offsets.items():
        position = fetch_position(consumer, tp)
        if position is not None and offset < position:
            consumer.seek(tp, offset)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not fetch cleared events again", exc_info=future.exception())
