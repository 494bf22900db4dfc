"""Contender (a), the limit: the least work a one-hop, exactly-once decision can cost in Python.

A bare aiokafka loop: `getmany()` a batch, msgspec-decode each request, one aiohttp GET of the
VAST upstream per request (the batch's GETs run concurrently), msgspec-encode a decision and
produce it, then commit the batch's input offsets in the same Kafka transaction. No state, no
caps, no budgets, no VAST parsing: whatever adstream adds costs more than this. It is tuned as
a careful aiokafka user would tune it (producer batch size, retry backoff, fetch wait) and
overlaps one batch's GETs with the previous batch's commit.

Run by the harness: `python -m bench._limit` with the environment of `bench._contract`.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench._contract import REQUESTS, BenchDecision, ContenderEnv, decision_suffix
from models.codec import decode_request, encode
from models.events import AdRequest

MAX_BATCH = 500
MAX_BATCH_BYTES = 512 * 1024
RETRY_BACKOFF_MS = 10
# aiokafka's default (500 ms) only matters when the input is idle, but then it delays the first
# request after the pause by up to that much.
FETCH_MAX_WAIT_MS = 10


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


Decided = list[tuple[AdRequest, tuple[int, str]]]


async def resolve(env: ContenderEnv, http: aiohttp.ClientSession, records: list[Any]) -> Decided:
    requests = [decode_request(record.value) for record in records]
    answers = await asyncio.gather(*(fetch(http, env.vast_url) for _ in requests))
    return list(zip(requests, answers, strict=True))


async def commit(
    env: ContenderEnv, producer: Any, group_id: str, offsets: dict[Any, int], decided: Decided
) -> None:
    async with producer.transaction():
        for request, (status, body) in decided:
            decision = BenchDecision.of(request, status, body)
            await producer.send(
                env.topic(decision_suffix(status)),
                encode(decision),
                key=request.campaign_id.encode(),
                timestamp_ms=decision.timestamp,
            )
        await producer.send_offsets_to_transaction(offsets, group_id)


async def run(env: ContenderEnv) -> None:
    group_id = env.topic("limit")
    consumer = AIOKafkaConsumer(
        env.topic(REQUESTS),
        bootstrap_servers=env.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=env.bootstrap_servers,
        transactional_id=f"{group_id}-txn",
        # With the default 16 KB, `send` waits for a broker round trip every few decisions
        # (aiokafka appends to one open batch per partition): a batch's decisions must fit.
        max_batch_size=MAX_BATCH_BYTES,
        # Against Kafka 4, a transaction begun right after a commit often has its first produce
        # refused with the retriable NotEnoughReplicas (seen here; likely the broker's partition
        # verification reporting the previous commit still completing to an old client): each
        # batch would wait out aiokafka's default backoff of 100 ms.
        retry_backoff_ms=RETRY_BACKOFF_MS,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await producer.start()
    await consumer.start()
    committing: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=MAX_BATCH)
                if not batches:
                    continue
                records = [record for partition in batches.values() for record in partition]
                offsets = {tp: partition[-1].offset + 1 for tp, partition in batches.items()}
                decided = await resolve(env, http, records)
                # Transactions go one at a time, but this batch's GETs overlapped the
                # previous batch's produce and commit.
                if committing is not None:
                    await committing
                committing = asyncio.create_task(commit(env, producer, group_id, offsets, decided))
            if committing is not None:
                await committing
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    asyncio.run(run(ContenderEnv.from_environ()))


if __name__ == "__main__":
    main()
