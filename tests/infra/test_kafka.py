"""The broker is real: idempotence, transactions, read_committed and consumer groups."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()


async def read_all(
    bootstrap: str, topic: str, *, isolation: str, expect: int, timeout_s: float = 10.0
) -> list[bytes]:
    """Read from the beginning until `expect` records arrived or the timeout passed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(values) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            values += [r.value for records in batches.values() for r in records if r.value]
    finally:
        await consumer.stop()
    return values


async def test_idempotent_producer_round_trip(kafka_bootstrap: str, unique_name: str) -> None:
    await create_topic(kafka_bootstrap, unique_name)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        sent = [f"event-{i}".encode() for i in range(50)]
        for value in sent:
            await producer.send(unique_name, value, key=b"user-1")
        await producer.flush()
    finally:
        await producer.stop()
    got = await read_all(kafka_bootstrap, unique_name, isolation="read_uncommitted", expect=50)
    assert got == sent


async def test_consume_transform_produce_transaction(
    kafka_bootstrap: str, unique_name: str
) -> None:
    source, sink, group = f"{unique_name}-in", f"{unique_name}-out", f"{unique_name}-g"
    await create_topic(kafka_bootstrap, source)
    await create_topic(kafka_bootstrap, sink)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{unique_name}-tx"
    )
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(3):
                await producer.send(source, f"in-{i}".encode())
        await consumer.start()
        consumed: list[Any] = []
        deadline = time.monotonic() + 10
        while len(consumed) < 3 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                consumed += records
        assert [r.value for r in consumed] == [b"in-0", b"in-1", b"in-2"]
        partition = TopicPartition(source, 0)
        async with producer.transaction():
            for record in consumed:
                await producer.send(sink, (record.value or b"").upper())
            await producer.send_offsets_to_transaction({partition: consumed[-1].offset + 1}, group)
        # An aborted transaction: its record must stay invisible to read_committed readers.
        await producer.begin_transaction()
        await producer.send(sink, b"ABORTED")
        await producer.flush()
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(sink, b"AFTER")
        committed = await consumer.committed(partition)
    finally:
        await consumer.stop()
        await producer.stop()

    assert committed == 3
    visible = await read_all(kafka_bootstrap, sink, isolation="read_committed", expect=4)
    assert visible == [b"IN-0", b"IN-1", b"IN-2", b"AFTER"]
    # The aborted record is in the log all the same: only the isolation level hides it.
    raw = await read_all(kafka_bootstrap, sink, isolation="read_uncommitted", expect=5)
    assert b"ABORTED" in raw


async def test_consumer_group_resumes_where_it_left_off(
    kafka_bootstrap: str, unique_name: str
) -> None:
    await create_topic(kafka_bootstrap, unique_name)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send(unique_name, str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()

    async def consume(count: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            unique_name,
            bootstrap_servers=kafka_bootstrap,
            group_id=unique_name,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=count,
        )
        await consumer.start()
        try:
            taken: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(taken) < count and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200, max_records=count - len(taken))
                taken += [r.value for records in batches.values() for r in records if r.value]
            await consumer.commit()
            return taken
        finally:
            await consumer.stop()

    first = await consume(4)
    second = await consume(6)
    assert first == [b"0", b"1", b"2", b"3"]
    assert second == [str(i).encode() for i in range(4, 10)]
