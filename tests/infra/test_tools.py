"""Kafka's own command-line tools, from the launcher's jar cache, against the test broker."""

from __future__ import annotations

import asyncio
import subprocess

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from infra.broker import ensure_jars


def kafka_tool(tool_class: str, *args: str) -> subprocess.CompletedProcess[str]:
    jars = ensure_jars()
    return subprocess.run(
        ["java", "-cp", f"{jars}/*", tool_class, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_consumer_groups_and_the_console_consumer_work_against_the_broker(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, group = f"{unique_name}-t", f"{unique_name}-g"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique_name)
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            for value in (b"one", b"two"):
                await producer.send(topic, value)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "")})
    finally:
        await consumer.stop()

    groups, read = await asyncio.gather(
        asyncio.to_thread(
            kafka_tool,
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            *["--bootstrap-server", kafka_bootstrap, "--describe", "--group", group],
        ),
        asyncio.to_thread(
            kafka_tool,
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
            *["--bootstrap-server", kafka_bootstrap, "--topic", topic, "--from-beginning"],
            *["--isolation-level", "read_committed", "--max-messages", "2"],
            *["--timeout-ms", "60000"],
        ),
    )

    assert groups.returncode == 0, groups.stderr
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    row = next(line.split() for line in groups.stdout.splitlines() if line.startswith(group))
    assert row[1:4] == [topic, "0", "1"]
    assert read.stdout.splitlines() == ["one", "two"]
