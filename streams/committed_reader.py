"""Reading whole topics once, as they stand: every committed record (read_committed) from the
beginning up to the end offsets seen at the start, without a consumer group."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.admin import partition_counts

OnRecord = Callable[[ConsumerRecord[bytes, bytes]], None]


class MissingTopic(Exception):
    pass


async def topic_partitions(bootstrap: str, names: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the topics; `MissingTopic` if one does not exist."""
    names = list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        counts = await partition_counts(admin, names)
    finally:
        await admin.close()
    for name in names:
        if name not in counts:
            raise MissingTopic(f"topic {name} does not exist (is ADSTREAM_TOPIC_PREFIX right?)")
    return [TopicPartition(name, p) for name in names for p in range(counts[name])]


async def read_committed(bootstrap: str, handlers: Mapping[str, OnRecord]) -> None:
    """Hand each committed record of each topic to its handler, partition by partition in
    offset order."""
    partitions = await topic_partitions(bootstrap, handlers)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        # read_committed: the last stable offsets, the first not readable yet.
        ends = await consumer.end_offsets(partitions)
        # Explicit offsets: `seek_to_beginning` can lose a race with the fetcher's own reset.
        starts = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        todo = {tp for tp in partitions if starts[tp] < ends[tp]}
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    handlers[tp.topic](record)
            todo = {tp for tp in todo if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
