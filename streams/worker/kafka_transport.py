"""Faust's Kafka transport as adstream runs it: subclasses of faust-streaming 0.15.3's aiokafka
driver (`faust.transport.drivers.aiokafka`), chosen by the broker URL's scheme (`broker_url`).

Faust picks a transport by the scheme of `broker`; the `faust.transports` entry point in
pyproject.toml names `Transport` below for `adstream://`. Its `Consumer`, consumer thread and
`Producer` carry these fixes of faust-streaming's exactly-once (numbered across the modules
that fix it: `streams.worker.commit_protocol` 1 to 4, `streams.worker.skipped_events` 5 and 11,
`streams.worker.event_context` 6, `streams.worker.recovery` 10 and 12,
`streams.worker.committed_store` 13) and, beyond exactly-once, 14:

7. **`fetch_max_wait_ms` is hard-coded to 1500 ms**, which alone costs p50 ~200 ms of latency
   at moderate rates (docs/architecture.md, "Performance facts"), and the producers'
   `retry_backoff_ms` stays at aiokafka's 100 ms: the first send of a transaction begun right
   after a commit is often refused as retriable by Kafka 4, and each such retry cost a batch
   100 ms. `ConsumerThread` takes the wait from the broker URL (`?fetch_max_wait_ms=`),
   `Producer` sets the backoff.
8. **Moved tables were never restored.** With transactions, Faust takes a changelog
   partition's highwater from aiokafka's cached last stable offset, which stays empty until
   that partition has been fetched: every partition new to a worker had highwater -1, so
   recovery read nothing, and a worker taking over partitions (scale-out, a crashed peer)
   decided on empty tables (caps, budgets and dedupe forgotten; `tests/scale`, scenario
   `scale_out`). A partition it had owned before could crash it with a `ConsistencyError`.
   `ConsumerThread` asks the broker instead: a read_committed consumer's end offsets are the
   last stable offsets (and item 10 moves them back to the last committed record).
9. **Fetched records were dropped unseen, for good.** Faust hands aiokafka its *live* set of
   active partitions; a rebalance empties it while a fetch waits, and aiokafka reads an
   empty set as "every partition": it returned the records of paused changelog partitions
   (advancing their positions), and Faust, whose flow had stopped, dropped them. Faust also
   drops a fetched batch's rest when its flow stops or the generation changes mid-batch, and
   records of partitions paused meanwhile, without ever fetching them again (it seeks stream
   partitions back to their committed offsets, and only when its flow stopped). When the
   fetch straddled a recovery's seek, the recovery of those changelog partitions read
   nothing (`tests/scale` `scale_out`: a moved campaign's rules, caps and spend were gone).
   `ConsumerThread` fetches exactly the partitions asked for (`fetch_asked`), and `Consumer`
   seeks a partition back to the first record Faust did not deliver, unless a seek has moved
   it since.

14. **A small topic's records queued behind a backlog of another's.** Faust delivers each
   fetch's records one at a time through a single loop before it fetches again, and aiokafka
   hands over what it holds in the order it fetched it, all of it (`broker_max_poll_records`
   unset). The decision stage reads `budget-leases` beside `ad-requests`: with thousands of
   requests waiting, the lease grants they wait for came after all of them (a worker started
   on 6,000 waiting requests decided nothing for 43-78 s on a busy machine, every request
   parked on a lease whose grant sat in aiokafka's buffer). `ConsumerThread` takes the
   records of the topics named by `Consumer.deliver_first` before any others, and the app
   bounds each fetch handed to Faust (`broker_max_poll_records`), so such a record waits
   behind one fetch's worth of requests at most.

`Consumer` also hands Faust's commits to the commit protocol (item 4) and turns off Faust's
guess at aborted transactions during a restore (item 10).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport import by_url
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from typing_extensions import override
from yarl import URL

from streams.worker.recovery import changelog_ends

log = logging.getLogger(__name__)

SCHEME = "adstream"
"""The broker URL scheme that picks `Transport` (pyproject.toml's `faust.transports`)."""

FAUST_FETCH_MAX_WAIT_MS = 1500
"""Faust's own fetch wait, for a broker URL that names none."""

RETRY_BACKOFF_MS = 10
"""The producers' wait before a retriable send is tried again (item 7)."""

FaustCommit = Callable[[Any, bool], Awaitable[bool]]
"""What takes over Faust's commits: (topics, start_new_transaction) -> whether it committed."""

Fetch = Callable[..., Awaitable[Mapping[TP, list[Any]]]]
"""aiokafka's fetch as Faust calls it: (consumer, partitions, timeout=, max_records=)."""


def broker_url(bootstrap_servers: str, *, fetch_max_wait_ms: int) -> str:
    """The `broker` setting that runs the app on `Transport`."""
    url = f"{SCHEME}://{bootstrap_servers}?fetch_max_wait_ms={fetch_max_wait_ms}"
    chosen = by_url(url)
    if chosen is not Transport:
        raise RuntimeError(
            f"the broker scheme {SCHEME}:// picks {chosen}, not {Transport}: the package's "
            "`faust.transports` entry point is missing; reinstall it (make .venv/.installed)"
        )
    return url


def fetch_max_wait_ms(urls: list[URL]) -> int:
    """The fetch wait the broker URL asks for."""
    return int(urls[0].query.get("fetch_max_wait_ms", FAUST_FETCH_MAX_WAIT_MS))


class Producer(faust_aiokafka.Producer):
    """Every producer Faust creates (its own and each transaction's) retries sooner."""

    @override
    def _settings_default(self) -> Mapping[str, Any]:
        return {**super()._settings_default(), "retry_backoff_ms": RETRY_BACKOFF_MS}


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The thread that owns the aiokafka consumer: its fetch wait, its partitions' ends."""

    @override
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms(transport.url)
        return consumer

    @override
    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # Our consumer reads read_committed: its end offsets are the last stable offsets
        # (item 8); recovery reads up to the last record before them (item 10).
        offsets: Mapping[TP, int] = await self._ensure_consumer().end_offsets(partitions)
        transport = cast(Transport, self.transport)
        servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        return await changelog_ends(servers, offsets)

    @override
    async def _fetch_records(
        self,
        consumer: AIOKafkaConsumer,
        active_partitions: set[TP] | None,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Mapping[TP, list[Any]]:
        first = cast(Consumer, self.consumer).first_topics
        return await fetch_asked(
            super()._fetch_records, consumer, active_partitions, timeout, max_records, first
        )


async def fetch_asked(
    fetch: Fetch,
    consumer: AIOKafkaConsumer,
    active_partitions: set[TP] | None,
    timeout: float | None = None,  # noqa: ASYNC109 (Faust's signature)
    max_records: int | None = None,
    first: frozenset[str] = frozenset(),
) -> Mapping[TP, list[Any]]:
    """Item 9: `fetch` (Faust's) for exactly the partitions asked for now, remembering where
    each partition stood after the records it returned; item 14: what aiokafka holds of the
    `first` topics comes before anything else."""
    if active_partitions is None:  # a client-only app: every partition
        return await fetch(consumer, None, timeout=timeout, max_records=max_records)
    # Faust passes its live set of active partitions, which rebalances and recoveries change
    # while the fetch waits; aiokafka reads an empty set as "every partition".
    asked = set(active_partitions)
    if not asked:
        return {}
    urgent = {tp for tp in asked if tp.topic in first}
    records: dict[TP, list[Any]] = {}
    if urgent:
        records.update(await fetch(consumer, urgent, timeout=0, max_records=max_records))
    if not records:
        records.update(await fetch(consumer, asked, timeout=timeout, max_records=max_records))
    else:
        # What the others hold joins without waiting: the urgent records go now.
        left = None if max_records is None else max_records - sum(map(len, records.values()))
        if left is None or left > 0:
            records.update(await fetch(consumer, asked - urgent, timeout=0, max_records=left))
    return Fetched(records, {tp: fetch_position(consumer, tp) for tp in records})


class Consumer(faust_aiokafka.Consumer):
    """The app's consumer: fetches again what Faust drops (item 9), commits through the commit
    protocol once one takes over (item 4), and keeps Faust's restores from guessing (item 10)."""

    _fetched: Mapping[TP, list[Any]] | None = None
    _committer: FaustCommit | None = None
    first_topics: frozenset[str] = frozenset()
    """Topics whose fetched records reach Faust before any others' (item 14)."""

    def deliver_first(self, topics: Iterable[str]) -> None:
        """Hand the records of `topics` to Faust ahead of others fetched with them."""
        self.first_topics = frozenset(topics)

    def commit_with(self, commit: FaustCommit) -> None:
        """From now on every commit Faust makes (its timer's, a rebalance's, the last one at
        shutdown: all go through `force_commit`) is `commit`'s."""
        self._committer = commit

    @override
    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if self._committer is None:
            committed: bool = await super().force_commit(
                topics, start_new_transaction=start_new_transaction
            )
            return committed
        return await self._committer(topics, start_new_transaction)

    @override
    async def position(self, tp: TP) -> int | None:
        # Only Faust's guess at aborted transactions asks (faust/tables/recovery.py); it
        # jumps when the position is at or past the highwater, which -1 never is (item 10).
        return -1

    @override
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @override
    async def _wait_next_records(
        self, timeout: float
    ) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        records, active_partitions = await super()._wait_next_records(timeout)
        self._fetched = records
        return records, active_partitions

    @override
    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        self._fetched = None
        delivered: dict[TP, int] = {}
        try:
            async for tp, message in super().getmany(timeout):
                delivered[tp] = message.offset
                yield tp, message
        finally:
            fetched, self._fetched = self._fetched, None
            undelivered: dict[TP, tuple[int, int]] = (
                fetched.undelivered(delivered) if isinstance(fetched, Fetched) else {}
            )
            if undelivered:
                log.info("Faust dropped fetched records, fetching them again from %s", undelivered)
                thread = self._thread
                await thread.call_thread(give_back, thread._ensure_consumer(), undelivered)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with adstream's consumer and producer."""

    Consumer = Consumer
    Producer = Producer


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
        if fetch_position(consumer, tp) == position:
            consumer.seek(tp, offset)


def fetch_position(consumer: AIOKafkaConsumer, tp: TP) -> int | None:
    """aiokafka's fetch position of an assigned partition (None if it has none)."""
    subscription = consumer._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    state = None if assignment is None else assignment.state_value(tp)
    return None if state is None else state._position


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
    return {
        tp: fetch_position(kafka_consumer, tp) for tp in consumer.assignment() if tp.topic in wanted
    }
