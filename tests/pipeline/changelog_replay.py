"""The worker's tables as a replay of their changelogs rebuilds them, and the checks of that
replay against the decisions read and against what the worker itself answers.

A restarted worker must hold exactly the committed state: the replay reads the changelogs
read_committed, as a restore does, and keeps each key's last value.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TypeVar

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.money import to_micros
from streams.decision_reader import Decision
from streams.state import spend
from streams.state.leases import Lease
from streams.worker.tables import CapEntry, SeenRequest, split_frequency_key
from tests.pipeline.harness import Deployment

V = TypeVar("V")


class Replayed(msgspec.Struct):
    seen: dict[str, SeenRequest]
    frequency: dict[str, CapEntry]
    leases: dict[str, Lease]


async def changelog(deployment: Deployment, table: str) -> dict[bytes, bytes]:
    """Each key's last committed value in `table`'s changelog (deleted keys left out)."""
    topic = f"{deployment.group_id}-{table}-changelog"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=deployment.bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: dict[bytes, bytes | None] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(deployment.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    assert record.key is not None
                    values[record.key] = record.value
    finally:
        await consumer.stop()
    return {key: value for key, value in values.items() if value is not None}


def decoded(raw: Mapping[bytes, bytes], kind: type[V]) -> dict[str, V]:
    decoder = msgspec.msgpack.Decoder(kind)
    return {key.decode(): decoder.decode(value) for key, value in raw.items()}


async def replay(deployment: Deployment) -> Replayed:
    seen, frequency, leases = await asyncio.gather(
        *(changelog(deployment, table) for table in ("seen", "frequency", "leases"))
    )
    return Replayed(
        decoded(seen, SeenRequest), decoded(frequency, CapEntry), decoded(leases, Lease)
    )


def replay_problems(replayed: Replayed, decisions: Iterable[Decision]) -> list[str]:
    """Where the replayed tables differ from the decisions: every decided request remembered,
    nothing else; each (campaign, user)'s impressions the times it was served; each
    campaign's leases spent what its served ads cost."""
    decided = list(decisions)
    problems = []
    ids = {d.payload["request_id"] for d in decided}
    unknown, forgotten = replayed.seen.keys() - ids, ids - replayed.seen.keys()
    if unknown or forgotten:
        problems.append(
            f"seen: {len(forgotten)} decided requests missing, {len(unknown)} never decided"
        )
    served: dict[tuple[str, str], list[int]] = defaultdict(list)
    costs: dict[str, int] = defaultdict(int)
    for d in decided:
        if d.topic == "served":
            costs[d.payload["campaign_id"]] += to_micros(d.payload["cost"])
            if d.payload["user_id"] is not None:
                served[(d.payload["campaign_id"], d.payload["user_id"])].append(
                    d.payload["timestamp"]
                )
    impressions = {
        split_frequency_key(key): entry.impressions.times
        for key, entry in replayed.frequency.items()
    }
    wrong = [
        key
        for key in impressions.keys() | served.keys()
        if impressions.get(key, []) != sorted(served.get(key, []))
    ]
    if wrong:
        problems.append(f"frequency: {len(wrong)} (campaign, user) differ, e.g. {wrong[:3]}")
    spent: dict[str, int] = defaultdict(int)
    for lease in replayed.leases.values():
        spent[lease.campaign_id] += lease.spend().lifetime
    for campaign_id in spent.keys() | costs.keys():
        if spent[campaign_id] != costs[campaign_id]:
            problems.append(
                f"leases: {campaign_id} spent {spent[campaign_id]}, served {costs[campaign_id]}"
            )
    return problems


async def worker_problems(
    deployment: Deployment, replayed: Replayed, capped: Iterable[str]
) -> list[str]:
    """Where the worker's own tables (as it answers for them) differ from the replay: each
    campaign's spend, and each user's impressions of the `capped` campaigns."""
    problems = []
    leases: dict[str, list[Lease]] = defaultdict(list)
    for lease in replayed.leases.values():
        leases[lease.campaign_id].append(lease)
    for campaign_id, held in leases.items():
        state = await deployment.state(campaign_id)
        expected = spend.total(lease.spend() for lease in held).lifetime
        if state.spend is None or state.spend.lifetime != expected:
            problems.append(f"{campaign_id}: the worker's spend {state.spend}, replayed {expected}")
    wanted = set(capped)
    for key, entry in replayed.frequency.items():
        campaign_id, user_id = split_frequency_key(key)
        if campaign_id not in wanted:
            continue
        state = await deployment.state(campaign_id, user_id)
        times = None if state.cap is None else state.cap.times
        if times != entry.impressions.times:
            problems.append(f"{campaign_id}/{user_id}: the worker's {times}, replayed")
    return problems
