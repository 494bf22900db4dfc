"""Driving a real worker: start it as a process, publish to its topics, read its decisions.

Each `Deployment` has its own topic prefix and consumer group, so tests never see each
other's data even on one broker. Decisions are read by one read_committed consumer, the way
billing and audit read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.process import free_port, tail
from models.codec import encode
from models.context import SessionContext, user_key
from models.events import SCHEMA_VERSION, AdRequest, Budget, Campaign, FrequencyCap
from streams.admin import ensure_topics, publish_campaigns
from streams.lookaside import StateView
from streams.topics import Topics

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
class Decision:
    topic: str
    """`served`, `denied` or `dlq`."""
    payload: dict[str, Any]
    offset: int

    @property
    def reason(self) -> str | None:
        return self.payload.get("reason")


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    web_port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {tail(self.log_path, 40)}")
                try:
                    response = await client.get(self.url("/adstream/ready/"))
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        raise TimeoutError(f"worker not ready in {timeout_s}s: {tail(self.log_path, 40)}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Deployment:
    """One worker group on its own topics: publish requests, read decisions."""

    bootstrap: str
    redis_url: str
    root: Path
    partitions: int = 2
    store: str = "memory"
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    decisions: dict[str, Decision] = field(default_factory=dict)
    duplicates: list[Decision] = field(default_factory=list)
    dead_letters: list[Decision] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def topics(self) -> Topics:
        return Topics.named(f"{self.name}-", self.name)

    def worker_env(self, index: int, web_port: int) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "ADSTREAM_TOPIC_PREFIX": f"{self.name}-",
            "ADSTREAM_APP_ID": self.name,
            "ADSTREAM_PARTITIONS": str(self.partitions),
            "ADSTREAM_DATA_DIR": str(self.root / f"worker-{index}"),
            "ADSTREAM_STORE": self.store,
            "ADSTREAM_WEB_PORT": str(web_port),
            "ADSTREAM_WEB_BIND": "127.0.0.1",
            "ADSTREAM_LOG_LEVEL": "info",
            **self.extra_env,
        }

    async def start(self) -> None:
        await ensure_topics(self.bootstrap, self.topics, self.partitions)
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True)
        await self._producer.start()
        self._reader = asyncio.create_task(self._read())
        await self.add_worker()

    async def add_worker(self, index: int | None = None) -> WorkerProcess:
        index = len(self.workers) if index is None else index
        port = free_port()
        worker = WorkerProcess(
            self.worker_env(index, port), self.root / f"worker-{index}.log", port
        )
        worker.start()
        self.workers.append(worker)
        await worker.wait_ready()
        return worker

    def alive_worker(self) -> WorkerProcess:
        return next(w for w in self.workers if w.proc is not None and w.proc.poll() is None)

    async def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._producer.stop()

    async def load(self, *campaigns: Campaign, timeout_s: float = 30.0) -> list[int]:
        """Publish campaigns and wait until the worker has each one's version in force."""
        offsets = await publish_campaigns(self.bootstrap, self.topics.campaigns, campaigns)
        for item, offset in zip(campaigns, offsets, strict=True):
            await self.wait_for_version(item.campaign_id, offset, timeout_s)
        return offsets

    async def state(self, campaign_id: str, user_id: str | None = None) -> StateView:
        """What the worker owning the campaign holds (its web route finds the owner)."""
        params = {"user": user_id} if user_id else {}
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(
                self.alive_worker().url(f"/adstream/state/{campaign_id}/"), params=params
            )
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=StateView)

    async def wait_for_version(self, campaign_id: str, version: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (await self.state(campaign_id)).version != version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"campaign {campaign_id} version {version} never in force")
            await asyncio.sleep(0.1)

    async def delete_campaign(self, campaign_id: str) -> None:
        await self._producer.send_and_wait(self.topics.campaigns, None, key=campaign_id.encode())

    async def publish(self, *requests: AdRequest) -> list[str]:
        for item in requests:
            context = item.context
            await self._producer.send(
                self.topics.requests,
                encode(item),
                key=user_key(context).encode(),
                timestamp_ms=context.timestamp,
            )
        await self._producer.flush()
        return [item.context.request_id for item in requests]

    async def publish_raw(self, value: bytes | None, key: bytes | None = b"raw") -> None:
        await self._producer.send_and_wait(self.topics.requests, value, key=key)

    async def until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `done()` holds after some read, or the timeout; return `done()`."""
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return True

    async def decided(self, request_ids: Iterable[str], timeout_s: float = 30.0) -> list[Decision]:
        """The decisions of these requests, in the given order, once all have arrived."""
        wanted = list(request_ids)
        if not await self.until(lambda: all(r in self.decisions for r in wanted), timeout_s):
            missing = [rid for rid in wanted if rid not in self.decisions]
            logs = "\n".join(tail(w.log_path, 30) for w in self.workers)
            raise TimeoutError(f"{len(missing)} of {len(wanted)} undecided: {missing[:3]}\n{logs}")
        return [self.decisions[rid] for rid in wanted]

    async def dead_lettered(self, count: int, timeout_s: float = 30.0) -> list[Decision]:
        await self.until(lambda: len(self.dead_letters) >= count, timeout_s)
        return list(self.dead_letters)

    async def _read(self) -> None:
        topics = self.topics
        names = {topics.served: "served", topics.denied: "denied", topics.dlq: "dlq"}
        consumer = AIOKafkaConsumer(
            *names,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=100)
                for tp, records in batches.items():
                    for record in records:
                        decision = Decision(
                            names[tp.topic], msgspec.json.decode(record.value), record.offset
                        )
                        if decision.topic == "dlq":
                            self.dead_letters.append(decision)
                            continue
                        request_id = decision.payload["request_id"]
                        if request_id in self.decisions:
                            self.duplicates.append(decision)
                        else:
                            self.decisions[request_id] = decision
                self._arrived.set()
        finally:
            await consumer.stop()
