"""Table writes reach the changelogs a restore reads: once per key per batch, last value last."""

from __future__ import annotations

import time

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from streams.state.spend import Spend
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

SERVED = 60
COST_MICROS = 2500  # campaign()'s cpm of 2.50


async def committed_records(
    bootstrap: str, topic: str, key: bytes, timeout_s: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of `topic` with `key`, as a restoring worker would read them."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            if not batches and records:
                break
            records += [r for batch in batches.values() for r in batch if r.key == key]
    finally:
        await consumer.stop()
    return records


async def test_spend_changelog_ends_at_the_tables_spend(
    deployment: Deployment, ad_url: str
) -> None:
    rules = campaign(ad_url)
    await deployment.load(rules)
    requests = [request(rules.campaign_id, BASE_MS + i, f"user-{i}") for i in range(SERVED)]
    decisions = await deployment.decided(await deployment.publish(*requests))
    assert [d.topic for d in decisions] == ["served"] * SERVED

    changelog = f"{deployment.group_id}-spend-changelog"
    records = await committed_records(deployment.bootstrap, changelog, rules.campaign_id.encode())
    assert records, f"no record of {rules.campaign_id} in {changelog}"
    # A batch writes a campaign's spend once, however many of its requests it served.
    assert len(records) < SERVED
    values = [msgspec.msgpack.decode(r.value or b"", type=Spend).lifetime for r in records]
    assert values == sorted(values)
    assert values[-1] == SERVED * COST_MICROS
    state = await deployment.state(rules.campaign_id)
    assert state.spend is not None and state.spend.lifetime == values[-1]
