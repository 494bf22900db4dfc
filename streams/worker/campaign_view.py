"""Every campaign's rules on every worker: the compacted `campaigns` topic, read whole.

Requests are decided on their user's partition, so any worker may decide any campaign. Each
worker therefore reads every partition of `campaigns` (read_committed, from the start, outside
the consumer group) into a dict, and keeps following it. The topic is compacted and small (one
record per campaign), so this costs a start-up read of a few records per campaign and nothing
per decision; a Faust global table would restore the same records through the per-record
recovery path and add a changelog of its own.

A record's offset is the version of its rules (`campaign_version` of every decision that
applies them). An invalid record changes nothing here, as everywhere: the configuration in
force stays (the `campaigns` stage dead-letters it once, `streams.worker.campaigns_stage`).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from models.codec import InvalidEvent, decode_campaign_record
from streams.state.campaigns import CampaignRules

log = logging.getLogger(__name__)


class CampaignView:
    """The rules in force of every campaign, as far as this worker has read."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.rules: dict[str, CampaignRules] = {}
        self.caught_up = asyncio.Event()
        """Set once everything committed to the topic before the start has been read."""
        self._changed: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None

    def get(self, campaign_id: str) -> CampaignRules | None:
        return self.rules.get(campaign_id)

    def changed(self) -> set[str]:
        """The campaigns whose rules changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        """One record of the topic, in offset order within its partition."""
        campaign_id = (key or b"").decode(errors="replace")
        if value is None:
            if self.rules.pop(campaign_id, None) is not None:
                self._changed.add(campaign_id)
            return
        try:
            campaign = decode_campaign_record(campaign_id, value)
        except InvalidEvent:
            return
        self.rules[campaign.campaign_id] = CampaignRules.from_campaign(campaign, version=offset)
        self._changed.add(campaign.campaign_id)

    async def follow(self) -> None:
        """Read the topic until cancelled; `caught_up` is set once the start's end is read."""
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        try:
            # Without a group, aiokafka assigns every partition of the topic to the reader.
            consumer.subscribe([self.topic])
            ends: dict[TopicPartition, int] | None = None
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self._apply_record(record)
                if self.caught_up.is_set() or not consumer.assignment():
                    continue
                if ends is None:
                    ends = await consumer.end_offsets(list(consumer.assignment()))
                if await _reached(consumer, ends):
                    log.info("campaign rules read: %d campaigns", len(self.rules))
                    self.caught_up.set()
        finally:
            await consumer.stop()

    async def sync(self, timeout_s: float = 5.0) -> None:
        """Until everything committed to the topic by now has been read (a campaign loaded
        just before its first requests must be known to them), or `timeout_s` has passed."""
        consumer = self._consumer
        if consumer is None or not consumer.assignment():
            return
        ends = await consumer.end_offsets(list(consumer.assignment()))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await _reached(consumer, ends):
            if asyncio.get_running_loop().time() > deadline:
                log.warning("campaign rules still behind the topic after %.0f s", timeout_s)
                return
            await asyncio.sleep(0.005)

    def _apply_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.apply(record.key, record.value, record.offset)


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
