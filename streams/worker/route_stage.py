"""Stage 1, on `ad-requests` (keyed by user): validate, drop duplicates, re-key by campaign.

A request that cannot be decoded or breaks the schema goes to the DLQ with its reason. A
request_id seen before (within `DEDUPE_WINDOW_MS` of event time) is dropped: it was decided
already, or will be. An event time more than a minute ahead of its record's timestamp is
refused too: the broker would refuse the decision's record. Everything else is forwarded
unchanged, keyed by campaign_id, with its event time as the record timestamp.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from faust.types import EventT

from models.codec import InvalidEvent, check_event_time, decode_request
from streams.state.expiry import ExpiryIndex, rebuilt
from streams.worker.event_context import event_context
from streams.worker.metrics import Metrics
from streams.worker.outputs import Outputs
from streams.worker.tables import DEDUPE_WINDOW_MS, SeenRequest, TypedTable

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        outputs: Outputs,
        seen: TypedTable[SeenRequest],
        by_campaign_topic: str,
        metrics: Metrics,
    ) -> None:
        self.outputs = outputs
        self.seen = seen
        self.by_campaign_topic = by_campaign_topic
        self.metrics = metrics
        self.expiry = ExpiryIndex()

    async def rebuild_expiry(self) -> None:
        """After a restore: index what the table holds, so it ages out like the rest."""
        self.expiry = await rebuilt(
            (entry.partition, request_id, entry.t + DEDUPE_WINDOW_MS)
            for request_id, entry in self.seen.items()
        )

    async def handle(self, events: Sequence[EventT[Any]]) -> None:
        last_of_partition: dict[int, EventT[Any]] = {}
        for event in events:
            with event_context(event):
                async with self.outputs.dead_letter_on_failure(event):
                    await self._route(event)
            last_of_partition[event.message.partition] = event
        for partition, event in last_of_partition.items():
            for request_id in self.expiry.due(partition):
                self.seen.delete(request_id, event)
        await self.seen.flush(self.outputs.send)
        await self.outputs.delivered()

    async def _route(self, event: EventT[Any]) -> None:
        message = event.message
        value = message.value or b""  # a null value (tombstone) is undecodable like any other
        try:
            request = decode_request(value)
            check_event_time(request.context.timestamp, round(message.timestamp * 1000))
        except InvalidEvent as exc:
            await self.outputs.dead_letter(event, exc.reason, exc.detail)
            return
        context = request.context
        if context.request_id in self.seen:
            self.metrics.duplicates.inc()
            log.info(
                "duplicate dropped",
                extra={"request_id": context.request_id, "correlator": context.correlator},
            )
            return
        partition = message.partition
        self.seen.set(context.request_id, SeenRequest(context.timestamp, partition), event)
        self.expiry.add(partition, context.request_id, context.timestamp + DEDUPE_WINDOW_MS)
        self.expiry.observe(partition, context.timestamp)
        await self.outputs.send(
            event, self.by_campaign_topic, request.campaign_id.encode(), value, context.timestamp
        )
