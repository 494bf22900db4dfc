"""Items 9 to 12 and 14 of adstream's Faust subclasses (`streams.worker.kafka_transport`,
`streams.worker.skipped_events`, `streams.worker.recovery`) against the real broker: Faust's
fetches take only the partitions it asks for and give back what it drops, the records of the
topics to deliver first come before a backlog, events cleared from its queues are fetched
again, a changelog's end for a restore is its last committed record, not the transaction
markers and aborted records after it, and a streamed restore reads exactly the committed
records."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, Message

from streams.worker.kafka_transport import Fetch, Fetched, fetch_asked, give_back
from streams.worker.recovery import changelog_ends, stream_changelogs
from streams.worker.skipped_events import SkippedEvents, rewind


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


@pytest.fixture
async def consumer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    reader = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await reader.start()
    yield reader
    await reader.stop()


async def filled(
    bootstrap: str, topic: str, per_partition: int, *, partitions: int = 2
) -> list[TopicPartition]:
    """A topic of `partitions` partitions holding `per_partition` records each."""
    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition in range(partitions):
            for index in range(per_partition):
                await producer.send_and_wait(topic, f"{index}".encode(), partition=partition)
    finally:
        await producer.stop()
    return [TopicPartition(topic, partition) for partition in range(partitions)]


async def buffered(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
    """Assign `partitions` from their start and let aiokafka's fetcher buffer records."""
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    for tp in partitions:
        await consumer.position(tp)


def faust_fetch() -> Fetch:
    """Faust's fetch, on as much of its consumer thread as `_fetch_records` looks at."""
    thread: Any = SimpleNamespace(consumer=SimpleNamespace(flow_active=True))
    return functools.partial(AIOKafkaConsumerThread._fetch_records, thread)


async def test_a_fetch_for_no_partition_takes_none(
    kafka_bootstrap: str, unique_name: str, consumer: AIOKafkaConsumer
) -> None:
    """Faust passes its live set of active partitions; a rebalance empties it while a fetch
    waits, and aiokafka reads an empty set as every partition: it handed Faust (which
    dropped them) the records of paused changelog partitions, past a recovery's seek."""
    partitions = await filled(kafka_bootstrap, unique_name, 3)
    await buffered(consumer, partitions)
    assert await fetch_asked(faust_fetch(), consumer, set(), timeout=1.0) == {}
    assert [await consumer.position(tp) for tp in partitions] == [0, 0]

    fetched = await fetch_asked(faust_fetch(), consumer, {partitions[0]}, timeout=5.0)
    assert list(fetched) == [partitions[0]]
    assert isinstance(fetched, Fetched)
    assert fetched.positions == {partitions[0]: 3}
    assert await consumer.position(partitions[1]) == 0


async def test_records_of_the_first_topics_come_before_a_backlog(
    kafka_bootstrap: str, unique_name: str, consumer: AIOKafkaConsumer
) -> None:
    """Item 14: a lease grant fetched after thousands of requests reached the stage only once
    all of them had, so every request parked on that lease waited for it."""
    backlog = await filled(kafka_bootstrap, f"{unique_name}-requests", 50)
    (control,) = await filled(kafka_bootstrap, f"{unique_name}-leases", 1, partitions=1)
    await buffered(consumer, [*backlog, control])
    fetcher: Any = consumer._fetcher
    deadline = asyncio.get_running_loop().time() + 10
    while not all(tp in fetcher._records for tp in (*backlog, control)):
        assert asyncio.get_running_loop().time() < deadline, "aiokafka never held all three"
        await asyncio.sleep(0.05)

    asked = {*backlog, control}
    fetched = await fetch_asked(
        faust_fetch(),
        consumer,
        asked,
        timeout=5.0,
        max_records=10,
        first=frozenset({control.topic}),
    )
    assert isinstance(fetched, Fetched)
    assert [r.offset for r in fetched[control]] == [0]
    assert sum(map(len, fetched.values())) == 10  # the rest of the bound went to the backlog
    assert set(fetched.positions) == set(fetched)


async def test_records_faust_did_not_deliver_are_fetched_again(
    kafka_bootstrap: str, unique_name: str, consumer: AIOKafkaConsumer
) -> None:
    """What Faust drops (flow stopped, partition paused, new generation) is read again,
    unless a seek has moved the partition since the fetch."""
    partitions = await filled(kafka_bootstrap, unique_name, 3)
    first, second = partitions
    await buffered(consumer, partitions)
    fetched = Fetched({}, {})
    while len(fetched) < 2:  # both partitions' records, whatever order they came in
        more = await fetch_asked(
            faust_fetch(), consumer, set(partitions) - set(fetched), timeout=5.0
        )
        assert isinstance(more, Fetched)
        fetched = Fetched({**fetched, **more}, {**fetched.positions, **more.positions})

    # Faust delivered the first record of the first partition, nothing of the second, and
    # a recovery sought the second partition elsewhere meanwhile.
    undelivered = fetched.undelivered({first: 0})
    assert undelivered == {first: (1, 3), second: (0, 3)}
    consumer.seek(second, 2)
    await give_back(consumer, undelivered)

    assert await consumer.position(first) == 1
    assert await consumer.position(second) == 2
    again = await consumer.getmany(first, timeout_ms=5000)
    assert [r.offset for r in again[first]] == [1, 2]


async def test_a_changelog_ends_at_its_last_committed_record(
    kafka_bootstrap: str, unique_name: str, consumer: AIOKafkaConsumer
) -> None:
    """A transactional changelog ends with a commit marker, often with aborted records
    before it: Faust waited for an offset no consumer is ever handed (every restore took
    10 s), then jumped to it whether or not it had read the records before it."""
    topic = unique_name
    await create_topic(kafka_bootstrap, topic, 3)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{unique_name}-tx"
    )
    await producer.start()
    try:
        async with producer.transaction():  # partition 0: offsets 0-2, marker at 3
            for index in range(3):
                await producer.send(topic, f"kept-{index}".encode(), key=b"k", partition=0)
        # An aborted transaction longer than the first window read: offsets 4-103, marker
        # at 104; partition 2 holds only aborted records (0-4, marker at 5).
        await producer.begin_transaction()
        for index in range(100):
            await producer.send(topic, f"aborted-{index}".encode(), key=b"k", partition=0)
        for _ in range(5):
            await producer.send(topic, b"aborted", key=b"k", partition=2)
        await producer.abort_transaction()
    finally:
        await producer.stop()
    partitions = [TopicPartition(topic, p) for p in range(3)]
    ends = await consumer.end_offsets(partitions)
    assert [ends[tp] for tp in partitions] == [105, 0, 6]

    assert await changelog_ends(kafka_bootstrap, ends) == {
        partitions[0]: 3,  # the record at 2 is the last one: Faust waits for 2, not 104
        partitions[1]: 0,  # empty
        partitions[2]: 0,  # nothing committed: nothing to restore
    }


async def test_a_streamed_restore_hands_on_exactly_the_committed_records(
    kafka_bootstrap: str, unique_name: str, consumer: AIOKafkaConsumer
) -> None:
    """Committed and aborted transactions interleaved in a changelog: a streamed restore
    applies the committed records from where the table stopped up to the last one asked for,
    in order, and never one of an aborted transaction."""
    topic = unique_name
    await create_topic(kafka_bootstrap, topic, 2)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{unique_name}-tx"
    )

    async def transaction(records: list[tuple[int, bytes]], *, commit: bool) -> None:
        await producer.begin_transaction()
        for partition, value in records:
            await producer.send(topic, value, key=value, partition=partition)
        await (producer.commit_transaction() if commit else producer.abort_transaction())

    await producer.start()
    try:
        await transaction([(0, b"c0"), (0, b"c1"), (0, b"c2")], commit=True)  # 0-2, marker 3
        aborted = [(0, f"a{i}".encode()) for i in range(50)] + [(1, b"a")] * 5
        await transaction(aborted, commit=False)  # 0: 4-53, marker 54; 1: 0-4, marker 5
        await transaction([(0, b"c3"), (0, b"c4"), (1, b"d0")], commit=True)  # 0: 55-56; 1: 6
        await transaction([(0, b"c5")], commit=True)  # 58: past the end asked for
    finally:
        await producer.stop()
    tps = [TP(topic, 0), TP(topic, 1)]
    ends = await changelog_ends(
        kafka_bootstrap, await consumer.end_offsets([TopicPartition(*tp) for tp in tps])
    )
    assert [ends[tp] for tp in tps] == [59, 7]

    applied: dict[TP, list[tuple[int, bytes | None]]] = {tp: [] for tp in tps}

    def apply(tp: TP, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        applied[tp] += [(r.offset, r.value) for r in records]

    count = await stream_changelogs(
        kafka_bootstrap,
        {tps[0]: 1, tps[1]: 0},  # partition 0's table holds the record at 0 already
        {tps[0]: 56, tps[1]: ends[tps[1]] - 1},
        apply,
        deadline=time.monotonic() + 60,
    )
    assert applied == {
        tps[0]: [(1, b"c1"), (2, b"c2"), (55, b"c3"), (56, b"c4")],
        tps[1]: [(6, b"d0")],
    }
    assert count == 5


async def test_events_cleared_from_faust_queues_are_fetched_again(
    kafka_bootstrap: str, unique_name: str, consumer: AIOKafkaConsumer
) -> None:
    """At the end of a recovery Faust seeks the stream partitions to their committed offsets,
    then clears its queues of what the fetcher delivered meanwhile: at a partition's tail no
    later event ever showed the hole, and the worker sat idle."""
    app = faust.App(unique_name, broker=f"kafka://{kafka_bootstrap}", store="memory://")
    skipped = SkippedEvents(app, kafka_bootstrap)
    given_back: list[dict[TP, int]] = []
    skipped._give_back = lambda cleared: given_back.append(dict(cleared))  # type: ignore[method-assign]
    skipped.install()
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    tp = TP(unique_name, 1)
    for offset in (7, 5, 6):
        message = Message(unique_name, 1, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)
        queue.put_nowait(app.create_event(b"k", b"v", None, message))

    app.flow_control.resume()  # as Faust does when a recovery ends

    assert queue.empty()
    assert given_back == [{tp: 5}]

    # In the consumer's thread: the partition goes back to the first event cleared, but a
    # partition already further back stays.
    partitions = await filled(kafka_bootstrap, f"{unique_name}-log", 10)
    await buffered(consumer, partitions)
    consumer.seek(partitions[0], 9)
    consumer.seek(partitions[1], 3)
    await rewind(consumer, {partitions[0]: 5, partitions[1]: 5})
    assert [await consumer.position(tp) for tp in partitions] == [5, 3]


async def test_holes_are_checked_again_once_a_recovery_ends(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """A restore of a million keys outlasts the window an assignment opens for checking holes
    in the offsets: Faust's drops at the end of that recovery went unchecked, and the requests
    behind them undecided. The window opens again when the recovery ends."""
    app = faust.App(unique_name, broker=f"kafka://{kafka_bootstrap}", store="memory://")
    skipped = SkippedEvents(app, kafka_bootstrap)
    skipped._give_back = lambda cleared: None  # type: ignore[method-assign]
    skipped.install()
    tp = TP(unique_name, 0)
    await skipped._assigned(app, {tp}, signal=None)
    assert skipped.watching(tp)
    skipped._check_until[tp] = 0.0  # the assignment's window passed during the restore

    assert not skipped.watching(tp)
    app.flow_control.resume()  # as Faust does when a recovery ends
    assert skipped.watching(tp)
