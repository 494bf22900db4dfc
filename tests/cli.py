"""Running the `adstream` command as users do (its own process) and reading what it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord


def run_adstream(
    args: Sequence[str],
    *,
    kafka_bootstrap: str,
    prefix: str,
    stdin: str = "",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`adstream ARGS` against this broker, on the topics under `prefix`."""
    environment = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, **(env or {})}
    environment["ADSTREAM_TOPIC_PREFIX"] = prefix
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout_s,
        check=False,
    )


async def read_topic(
    kafka_bootstrap: str, topic: str, count: int, timeout_s: float = 30
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first `count` records of `topic` (fewer if they do not come within `timeout_s`)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records += batch
    finally:
        await consumer.stop()
    return records
