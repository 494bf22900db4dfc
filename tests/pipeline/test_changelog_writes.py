"""Table writes reach the changelogs a restore reads: once per key per batch, last value last."""

from __future__ import annotations

import time

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from streams.state.leases import Lease
from streams.worker.tables import lease_key
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

SERVED = 60
COST_MICROS = 2500  # campaign()'s cpm of 2.50


async def committed_records(
    bootstrap: str, topic: str, key_prefix: bytes, timeout_s: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of `topic` whose key starts with `key_prefix`, as a restoring
    worker would read them."""
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
            records += [
                r
                for batch in batches.values()
                for r in batch
                if (r.key or b"").startswith(key_prefix)
            ]
    finally:
        await consumer.stop()
    return records


async def test_lease_changelogs_end_at_the_tables_spend(
    deployment: Deployment, ad_url: str
) -> None:
    rules = campaign(ad_url, lifetime="1000")
    await deployment.load(rules)
    requests = [request(rules.campaign_id, BASE_MS + i, f"user-{i}") for i in range(SERVED)]
    decisions = await deployment.decided(await deployment.publish(*requests))
    assert [d.topic for d in decisions] == ["served"] * SERVED

    changelog = f"{deployment.group_id}-leases-changelog"
    prefix = lease_key(rules.campaign_id, 0).rsplit("\x1f", 1)[0].encode() + b"\x1f"
    records = await committed_records(deployment.bootstrap, changelog, prefix)
    assert records, f"no lease of {rules.campaign_id} in {changelog}"
    # A batch writes a partition's lease once, however many of its requests it served.
    assert len(records) < SERVED
    by_lease: dict[bytes, list[int]] = {}
    for record in records:
        lease = msgspec.msgpack.decode(record.value or b"", type=Lease)
        by_lease.setdefault(record.key or b"", []).append(lease.spend().lifetime)
    for spent in by_lease.values():
        assert spent == sorted(spent)
    assert sum(spent[-1] for spent in by_lease.values()) == SERVED * COST_MICROS
    state = await deployment.state(rules.campaign_id)
    assert state.spend is not None and state.spend.lifetime == SERVED * COST_MICROS
