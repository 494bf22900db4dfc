"""Writing a stage's outputs: each record inside the transaction of the event it came from."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from faust.types import EventT

from models.codec import encode
from models.events import SCHEMA_VERSION, DeadLetter
from streams.faust_patches import TransactionalSender


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


class Outputs:
    """Collects the delivery futures of one batch, so the batch can wait for them at its end."""

    def __init__(self, sender: TransactionalSender, dlq_topic: str) -> None:
        self.sender = sender
        self.dlq_topic = dlq_topic
        self._pending: list[asyncio.Future[Any]] = []

    async def send(
        self,
        source: EventT[Any],
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        partition: int | None = None,
    ) -> None:
        """Send one record in `source`'s transaction, to `partition` or the key's."""
        future = await self.sender.send(
            source.message.tp, topic, key, value, timestamp_ms, partition
        )
        self._pending.append(future)

    async def dead_letter(self, source: EventT[Any], error: str) -> None:
        """Keep a message the worker cannot use, whole, with the reason."""
        message = source.message
        letter = DeadLetter(
            schema=SCHEMA_VERSION,
            key=_b64(message.key),
            value=_b64(message.value),
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error=error,
        )
        # Faust hands the record time over as float seconds; round() restores the exact ms.
        timestamp_ms = round(message.timestamp * 1000) if message.timestamp else 0
        await self.send(source, self.dlq_topic, message.key, encode(letter), timestamp_ms)

    async def delivered(self) -> None:
        """Wait until the broker has every record sent so far; raise the first failure."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
