"""The `campaigns` stage: each invalid campaign record goes to the DLQ once, with its reason.

Every worker reads every campaign's rules on its own (`streams.worker.campaign_view`) and
skips invalid records; this stage, whose partitions of `campaigns` are spread over the
consumer group like any stage's, is where an operator learns of them, exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from faust.types import EventT

from models.codec import InvalidEvent, decode_campaign_record
from streams.worker.event_context import event_context
from streams.worker.outputs import Outputs

log = logging.getLogger(__name__)


class CampaignChecker:
    def __init__(self, outputs: Outputs) -> None:
        self.outputs = outputs

    async def handle(self, events: Sequence[EventT[Any]]) -> None:
        for event in events:
            with event_context(event):
                async with self.outputs.dead_letter_on_failure(event):
                    await self._check(event)
        await self.outputs.delivered()

    async def _check(self, event: EventT[Any]) -> None:
        message = event.message
        key = (message.key or b"").decode(errors="replace")
        if message.value is None:
            log.info("campaign %s deleted at offset %d", key, message.offset)
            return
        try:
            decode_campaign_record(key, message.value)
        except InvalidEvent as exc:
            await self.outputs.dead_letter(event, exc.reason, exc.detail)
            return
        log.info("campaign %s version %d published", key, message.offset)
