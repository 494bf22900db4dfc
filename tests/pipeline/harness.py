"""Driving a real worker: start it as a process, publish to its topics, read its decisions.

Each `Deployment` has its own topic prefix and consumer group, so tests never see each
other's data even on one broker. Decisions are read by one read_committed consumer, the way
billing and audit read them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from infra.process import free_port
from models.context import SessionContext
from models.events import SCHEMA_VERSION, AdRequest, Budget, Campaign, FrequencyCap
from streams.admin import ensure_topics, publish_campaigns
from streams.decision_reader import Decision, DecisionReader
from streams.edge import request_record
from streams.lookaside import StateView
from streams.state import spend
from streams.state.spend import Spend
from streams.topics import Topics
from streams.worker.process import WorkerProcess

__all__ = ["BASE_MS", "DAY_MS", "Decision", "Deployment", "campaign", "request"]

DAY_MS = 86_400_000
# Event times in the past: the broker refuses record timestamps more than an hour ahead.
BASE_MS = (int(time.time() * 1000) // DAY_MS - 30) * DAY_MS
"""Midnight UTC, 30 days ago: tests place their event times from here."""


def campaign(
    vast_url: str,
    *,
    campaign_id: str | None = None,
    cpm: str = "2.50",
    lifetime: str | None = None,
    daily: str | None = None,
    caps: Iterable[tuple[int, int]] = (),
    anonymous_policy: str = "deny",
    active: bool = True,
) -> Campaign:
    return msgspec.convert(
        {
            "schema": SCHEMA_VERSION,
            "campaign_id": campaign_id or f"camp-{uuid.uuid4().hex[:8]}",
            "active": active,
            "vast_url": vast_url,
            "cpm": cpm,
            "currency": "USD",
            "budget": Budget(lifetime, daily),
            "frequency_caps": [FrequencyCap(max=m, window_s=w) for m, w in caps],
            "anonymous_policy": anonymous_policy,
        },
        Campaign,
        from_attributes=True,
    )


def request(
    campaign_id: str,
    at_ms: int,
    user_id: str | None = "user-1",
    *,
    cookies: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> AdRequest:
    jar = dict(cookies or {})
    if user_id is not None:
        jar.setdefault("user_id", user_id)
    context = SessionContext.create(jar, timestamp=at_ms)
    return AdRequest(SCHEMA_VERSION, context, campaign_id, "placement-1", dict(params or {}))


@dataclass
class Deployment:
    """One worker group on its own topics: publish requests, read decisions."""

    bootstrap: str
    redis_url: str
    root: Path
    partitions: int = 2
    store: str = "memory"
    extra_env: dict[str, str] = field(default_factory=dict)
    worker_command: tuple[str, ...] = ("-m", "streams.cli", "worker")
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    """The topic prefix (with a dash after it)."""
    app_id: str = ""
    """ADSTREAM_APP_ID; the name when empty."""
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reader = DecisionReader(self.bootstrap, self.topics)

    @property
    def topics(self) -> Topics:
        return Topics.named(f"{self.name}-")

    @property
    def group_id(self) -> str:
        """The workers' consumer group, which starts their internal topics' names."""
        return f"{self.name}-{self.app_id or self.name}"

    @property
    def decisions(self) -> dict[str, Decision]:
        return self.reader.decisions

    @property
    def duplicates(self) -> list[Decision]:
        return self.reader.duplicates

    @property
    def dead_letters(self) -> list[Decision]:
        return self.reader.dead_letters

    def worker_env(self, index: int, web_port: int) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "ADSTREAM_TOPIC_PREFIX": f"{self.name}-",
            "ADSTREAM_APP_ID": self.app_id or self.name,
            "ADSTREAM_PARTITIONS": str(self.partitions),
            "ADSTREAM_DATA_DIR": str(self.root / f"worker-{index}"),
            "ADSTREAM_STORE": self.store,
            "ADSTREAM_WEB_PORT": str(web_port),
            "ADSTREAM_WEB_BIND": "127.0.0.1",
            "ADSTREAM_LOG_LEVEL": os.environ.get("ADSTREAM_TEST_LOG_LEVEL", "info"),
            **self.extra_env,
        }

    async def start(self) -> None:
        await ensure_topics(self.bootstrap, self.topics, self.partitions)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True)
        await self.producer.start()
        await self.reader.start()
        await self.add_worker()

    async def add_worker(
        self, index: int | None = None, *, ready_timeout_s: float = 90.0
    ) -> WorkerProcess:
        index = len(self.workers) if index is None else index
        port = free_port()
        worker = WorkerProcess(
            self.worker_env(index, port),
            self.root / f"worker-{index}.log",
            port,
            self.worker_command,
        )
        worker.start()
        self.workers.append(worker)
        await worker.wait_ready(ready_timeout_s)
        return worker

    def alive_worker(self) -> WorkerProcess:
        return next(w for w in self.workers if w.running())

    async def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        await self.reader.stop()
        await self.producer.stop()

    async def __aenter__(self) -> Deployment:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def load(self, *campaigns: Campaign, timeout_s: float = 30.0) -> list[int]:
        """Publish campaigns and wait until the worker has each one's version in force."""
        offsets = await publish_campaigns(self.bootstrap, self.topics.campaigns, campaigns)
        for item, offset in zip(campaigns, offsets, strict=True):
            await self.alive_worker().wait_for_version(item.campaign_id, offset, timeout_s)
        return offsets

    async def state(self, campaign_id: str, user_id: str | None = None) -> StateView:
        """What the workers hold together: each answers for the partitions it owns, so a
        campaign's spend is the sum of their leases' and a user's caps are its owner's."""
        views = [await w.state(campaign_id, user_id) for w in self.workers if w.running()]
        if not views:
            raise RuntimeError("no worker is running")
        spends = [v.spend for v in views if v.spend is not None]
        caps = [v.cap for v in views if v.cap is not None]
        total = None
        if spends:
            summed = spend.total(Spend(s.lifetime, dict(s.daily), s.oldest_day) for s in spends)
            total = msgspec.structs.replace(spends[0], lifetime=summed.lifetime, daily=summed.daily)
        return msgspec.structs.replace(views[0], spend=total, cap=caps[0] if caps else None)

    async def delete_campaign(self, campaign_id: str) -> None:
        await self.producer.send_and_wait(self.topics.campaigns, None, key=campaign_id.encode())

    async def publish(self, *requests: AdRequest) -> list[str]:
        for item in requests:
            record = request_record(item)
            await self.producer.send(
                self.topics.requests,
                record.value,
                key=record.key,
                timestamp_ms=record.timestamp_ms,
            )
        await self.producer.flush()
        return [item.context.request_id for item in requests]

    async def publish_raw(self, value: bytes | None, key: bytes | None = b"raw") -> None:
        await self.producer.send_and_wait(self.topics.requests, value, key=key)

    async def until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        return await self.reader.until(done, timeout_s)

    async def settled(self, timeout_s: float = 60.0) -> bool:
        """Wait until the workers have committed every request published so far, then until
        the reader has read everything committed: a decision of those requests (a duplicate
        too) commits in the same transaction as its request's offset, so none can arrive
        later. False if that did not happen within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        ends = await self._request_ends()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            while True:
                committed = await admin.list_consumer_group_offsets(self.group_id)
                behind = {
                    tp: end
                    for tp, end in ends.items()
                    if end > (committed[tp].offset if tp in committed else 0)
                }
                if not behind:
                    break
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.1)
        finally:
            await admin.close()
        return await self.reader.caught_up(max(deadline - time.monotonic(), 1.0))

    async def _request_ends(self) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(self.topics.requests, p) for p in range(self.partitions)]
            return dict(await consumer.end_offsets(tps))
        finally:
            await consumer.stop()

    async def decided(self, request_ids: Iterable[str], timeout_s: float = 30.0) -> list[Decision]:
        """The decisions of these requests, in the given order, once all have arrived."""
        wanted = list(request_ids)
        if not await self.until(lambda: all(r in self.decisions for r in wanted), timeout_s):
            missing = [rid for rid in wanted if rid not in self.decisions]
            logs = "\n".join(w.log_tail(30) for w in self.workers)
            raise TimeoutError(f"{len(missing)} of {len(wanted)} undecided: {missing[:3]}\n{logs}")
        return [self.decisions[rid] for rid in wanted]

    async def dead_lettered(self, count: int, timeout_s: float = 30.0) -> list[Decision]:
        await self.until(lambda: len(self.dead_letters) >= count, timeout_s)
        return list(self.dead_letters)
