"""End-to-end health checks: a record through Kafka and a key through Redis."""

from __future__ import annotations

import contextlib
import time
import uuid

import msgspec
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


class ServiceHealth(msgspec.Struct, frozen=True):
    service: str
    address: str
    healthy: bool
    detail: str
    round_trip_ms: float


async def check_kafka(bootstrap: str, timeout_s: float = 30.0) -> ServiceHealth:
    """Create a throwaway topic, produce one record (acks=all) and read it back."""
    topic = f"adstream-health-{uuid.uuid4().hex[:12]}"
    payload = uuid.uuid4().bytes
    started = time.perf_counter()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    try:
        await admin.start()
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        await producer.start()
        await producer.send_and_wait(topic, payload)
        await consumer.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            if any(record.value == payload for records in batches.values() for record in records):
                elapsed = (time.perf_counter() - started) * 1000
                return ServiceHealth(
                    "kafka", bootstrap, True, "produced and consumed 1 record", elapsed
                )
        detail = f"the record was not read back within {timeout_s:.0f} s"
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
    finally:
        # Clean-up is best effort: the verdict above is what the caller asked for.
        with contextlib.suppress(Exception):
            await consumer.stop()
            await producer.stop()
            await admin.delete_topics([topic])
        await admin.close()
    return ServiceHealth("kafka", bootstrap, False, detail, (time.perf_counter() - started) * 1000)


async def check_redis(url: str) -> ServiceHealth:
    """Write a key with a TTL, read it back, delete it."""
    key = f"adstream:health:{uuid.uuid4().hex}"
    started = time.perf_counter()
    client = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        await client.set(key, b"ok", ex=60)
        value = await client.get(key)
        await client.delete(key)
        healthy = value == b"ok"
        detail = "set, got and deleted 1 key" if healthy else f"read back {value!r}"
    except redis.RedisError as exc:
        healthy, detail = False, f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return ServiceHealth("redis", url, healthy, detail, (time.perf_counter() - started) * 1000)
