"""Helpers of the billing tests: served events, a transactional producer onto a fresh
`ad-served` topic, the billing command as a process, and the ledger's view of a run."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from models.ad import Hop
from models.codec import encode
from models.events import SCHEMA_VERSION, AdServed
from models.money import to_micros
from streams.billing.ledger import Charge, Ledger, LedgerError
from streams.vast.result import ResolvedAd

DAY_MS = 86_400_000
BASE_MS = (int(time.time() * 1000) // DAY_MS - 30) * DAY_MS
"""Midnight UTC 30 days ago (the broker refuses record timestamps far in the future)."""
ROOT = Path(__file__).resolve().parents[2]

_AD = ResolvedAd(
    id="ad-1",
    sequence=None,
    ad_system="test",
    ad_title=None,
    impressions=("https://t.example/imp",),
    errors=(),
    creatives=(),
    vast="<VAST version='4.2'/>",
)


def served(
    campaign_id: str = "camp-1",
    cost: str = "0.0025",
    *,
    at_ms: int = BASE_MS,
    currency: str = "USD",
    request_id: str | None = None,
) -> AdServed:
    return AdServed(
        schema=SCHEMA_VERSION,
        request_id=request_id or f"req-{uuid.uuid4()}",
        correlator=str(uuid.uuid4()),
        campaign_id=campaign_id,
        placement_id="placement-1",
        user_id="user-1",
        timestamp=at_ms,
        cost=cost,
        currency=currency,
        ad=_AD,
        vast=_AD.vast,
        chain=(Hop(url="https://up.example/vast", status=200, ms=1.0),),
        campaign_version=0,
    )


class Topic:
    """A fresh `ad-served` topic under its own prefix, and a transactional producer onto it."""

    def __init__(self, bootstrap: str, prefix: str, partitions: int = 3) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.name = f"{prefix}ad-served"
        self.partitions = partitions
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id=f"{prefix}producer"
        )

    async def create(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.name, self.partitions, 1)])
            while True:  # until the metadata shows every partition with its leader
                (described,) = await admin.describe_topics([self.name])
                leaders = [p["leader"] for p in described["partitions"]]
                if len(leaders) == self.partitions and min(leaders) >= 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            await admin.close()
        await self._producer.start()

    async def close(self) -> None:
        await self._producer.stop()

    async def publish(
        self, events: Sequence[AdServed], *, abort: bool = False
    ) -> list[tuple[int, int]]:
        """Send `events` keyed by campaign in one transaction (committed, or aborted);
        returns each one's (partition, offset)."""
        return await self.publish_raw(
            [(event.campaign_id.encode(), encode(event), event.timestamp) for event in events],
            abort=abort,
        )

    async def publish_raw(
        self, records: Sequence[tuple[bytes | None, bytes | None, int]], *, abort: bool = False
    ) -> list[tuple[int, int]]:
        """(key, value, timestamp ms) records in one transaction."""
        producer = self._producer
        await producer.begin_transaction()
        futures = [
            await producer.send(self.name, value, key=key, timestamp_ms=timestamp)
            for key, value, timestamp in records
        ]
        placed = [(meta.partition, meta.offset) for meta in await asyncio.gather(*futures)]
        if abort:
            await producer.abort_transaction()
        else:
            await producer.commit_transaction()
        return placed


def expected_charges(events: Sequence[AdServed], placed: Sequence[tuple[int, int]]) -> list[Charge]:
    """What the ledger must hold for these (distinct) served events, in topic order."""
    charges = [
        Charge(
            request_id=event.request_id,
            campaign_id=event.campaign_id,
            timestamp=event.timestamp,
            cost_micros=to_micros(event.cost),
            currency=event.currency,
            partition=partition,
            offset=offset,
        )
        for event, (partition, offset) in zip(events, placed, strict=True)
    ]
    return sorted(charges, key=lambda charge: (charge.partition, charge.offset))


def ledger_charges(target: str) -> list[Charge]:
    with Ledger.open(target, read_only=True) as ledger:
        return list(ledger.charges())


def charges_in(target: str) -> int:
    """Charges in the ledger at `target`, 0 while it does not exist yet."""
    try:
        with Ledger.open(target, read_only=True) as ledger:
            return ledger.counts().charges
    except LedgerError:
        return 0


def billing_env(bootstrap: str, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ADSTREAM_TOPIC_PREFIX": prefix,
        "ADSTREAM_LOG_LEVEL": "warning",
    }


def billing_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", "billing", *args]


class Finished(msgspec.Struct, frozen=True):
    returncode: int
    stdout: str
    stderr: str


async def run_process(
    command: Sequence[str], env: dict[str, str], timeout_s: float = 60
) -> Finished:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=ROOT, stdout=PIPE, stderr=PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


async def run_billing(env: dict[str, str], *args: str, timeout_s: float = 60) -> Finished:
    return await run_process(billing_command(*args), env, timeout_s)


CAMPAIGNS = (("camp-a", "USD", "0.0025"), ("camp-b", "EUR", "1.125"), ("camp-c", "USD", "0.000001"))


@dataclass
class Expected:
    """What the ledger must hold once a workload is billed: positions in topic order."""

    charges: list[Charge] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    rejected: list[tuple[int, int]] = field(default_factory=list)

    def before(self, offsets: dict[int, int]) -> Expected:
        """The part of it read before `offsets` (partition -> next offset)."""

        def read(position: tuple[int, int]) -> bool:
            return position[1] < offsets.get(position[0], 0)

        return Expected(
            [c for c in self.charges if read((c.partition, c.offset))],
            [p for p in self.duplicates if read(p)],
            [p for p in self.rejected if read(p)],
        )


def ledger_state(target: str) -> Expected:
    with Ledger.open(target, read_only=True) as ledger:
        return Expected(
            list(ledger.charges()),
            [(d.partition, d.offset) for d in ledger.duplicates()],
            [(r.partition, r.offset) for r in ledger.rejected()],
        )


async def publish_mixed(topic: Topic, count: int, *, seed: int, chunk: int = 250) -> Expected:
    """`count` served events over several campaigns, currencies and UTC days, in committed
    transactions of `chunk`, with re-sent request_ids (2%), malformed records (1%) and an
    aborted transaction after each chunk."""
    rng = random.Random(seed)
    expected = Expected()
    sent: list[AdServed] = []
    for start in range(0, count, chunk):
        records: list[tuple[str, bytes | None, bytes | None, int]] = []
        events = []
        for i in range(start, min(start + chunk, count)):
            campaign_id, currency, cost = rng.choice(CAMPAIGNS)
            events.append(served(campaign_id, cost, currency=currency, at_ms=BASE_MS + i * 97_000))
        for event in events:
            records.append(("charge", event.campaign_id.encode(), encode(event), event.timestamp))
            if sent and rng.random() < 0.02:
                again = rng.choice(sent)
                records.append(
                    ("duplicate", again.campaign_id.encode(), encode(again), again.timestamp)
                )
            if rng.random() < 0.01:
                records.append(("rejected", None, b'{"schema": 1, "cost": "1.0"}', BASE_MS))
        sent += events
        placed = await topic.publish_raw([record[1:] for record in records])
        kinds = [record[0] for record in records]
        expected.charges += expected_charges(
            events, [at for kind, at in zip(kinds, placed, strict=True) if kind == "charge"]
        )
        expected.duplicates += [
            at for kind, at in zip(kinds, placed, strict=True) if kind == "duplicate"
        ]
        expected.rejected += [
            at for kind, at in zip(kinds, placed, strict=True) if kind == "rejected"
        ]
        await topic.publish([served() for _ in range(3)], abort=True)
    expected.charges.sort(key=lambda charge: (charge.partition, charge.offset))
    expected.duplicates.sort()
    expected.rejected.sort()
    return expected
