"""Real topics for the audit's tests: write histories with a transactional producer, run the
audit in-process (`audit_topics`) or as the `adstream audit` command (`run_cli`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from types import TracebackType

from aiokafka import AIOKafkaProducer

from models.codec import encode
from models.context import user_key
from models.events import AdDenied, AdRequest, AdServed, Campaign
from streams.admin import ensure_topics
from streams.audit.findings import Summary
from streams.audit.replay import Replayed, replay
from streams.audit.verify import Audit, Auditor
from streams.audit.window import Window
from streams.state.campaigns import CampaignRules
from streams.topics import Topics


async def audit_topics(
    bootstrap: str, topics: Topics, window: Window | None = None
) -> tuple[Audit, Replayed]:
    auditor = Auditor(window)
    replayed = await replay(bootstrap, topics, auditor)
    return auditor.finish(), replayed


def found(summary: Summary) -> set[tuple[str, str | None]]:
    return {(v.kind, v.request_id) for v in summary.violations}


async def run_cli(bootstrap: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`adstream audit ARGS` in a process of its own, with the deployment's settings."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "ADSTREAM_TOPIC_PREFIX": prefix}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams.cli", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


PARTITIONS = 2
"""Of each topic a `HistoryWriter` creates."""


class HistoryWriter:
    """Writes events straight to a deployment's public topics, each batch one transaction."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id=f"audit-test-{uuid.uuid4().hex}"
        )

    async def __aenter__(self) -> HistoryWriter:
        await ensure_topics(self.bootstrap, self.topics, partitions=PARTITIONS)
        await self.producer.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.producer.stop()

    async def campaigns(self, *configs: Campaign) -> list[CampaignRules]:
        """Publish configurations; their rules carry the offsets decisions must name."""
        async with self.producer.transaction():
            sent = [
                await self.producer.send(
                    self.topics.campaigns, encode(c), key=c.campaign_id.encode()
                )
                for c in configs
            ]
        offsets = [(await future).offset for future in sent]
        return [CampaignRules.from_campaign(c, o) for c, o in zip(configs, offsets, strict=True)]

    async def write(
        self,
        requests: Sequence[AdRequest] = (),
        decisions: Sequence[AdServed | AdDenied] = (),
        raw_requests: Sequence[tuple[bytes, int]] = (),
        *,
        abort: bool = False,
    ) -> None:
        """Requests (keyed by user, stamped with their event time), malformed request values
        (value, timestamp) and decisions (keyed by campaign), in one transaction."""
        await self.producer.begin_transaction()
        for item in requests:
            await self.producer.send(
                self.topics.requests,
                encode(item),
                key=user_key(item.context).encode(),
                timestamp_ms=item.context.timestamp,
            )
        for value, timestamp in raw_requests:
            await self.producer.send(
                self.topics.requests, value, key=b"raw", timestamp_ms=timestamp
            )
        for event in decisions:
            topic = self.topics.served if isinstance(event, AdServed) else self.topics.denied
            await self.producer.send(
                topic, encode(event), key=event.campaign_id.encode(), timestamp_ms=event.timestamp
            )
        if abort:
            await self.producer.abort_transaction()
        else:
            await self.producer.commit_transaction()
