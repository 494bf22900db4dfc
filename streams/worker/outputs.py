"""Writing a stage's outputs: each record inside the transaction of the event it came from.

It is also where a message that cannot be processed ends: `dead_letter_on_failure` wraps the
processing of one message, so that whatever goes wrong with it (decoding, validation, state
encoding, resolution, output encoding) ends in that message's dead letter and the stage goes
on. Only a failure to write to Kafka (`OutputFailure`: the broker's fault, not the input's)
leaves the stage.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from faust.types import EventT

from models.codec import encode
from models.events import SCHEMA_VERSION, DeadLetter
from streams.dead_letters import identifiers_of
from streams.worker.commit_protocol import TransactionalSender
from streams.worker.metrics import Metrics

log = logging.getLogger(__name__)

KEPT_KEY_BYTES = 16 * 1024
"""A dead letter keeps a key up to this size whole, else its first this many bytes."""
KEPT_VALUE_BYTES = 512 * 1024
"""A dead letter keeps a value up to this size whole, else its first this many bytes."""
KEPT_ERROR_CHARS = 2_000
"""The longest error text a dead letter carries. With the two bounds above, every dead letter
stays below `MAX_RECORD_BYTES` whatever the message (tests/test_outputs.py)."""


class OutputFailure(Exception):
    """Kafka did not take an output. Not the input's fault: the stage stops, and a restarted
    worker processes the batch again (its transaction is aborted)."""


def _kept(data: bytes | None, bound: int) -> tuple[bytes | None, int | None, str | None]:
    """`data` whole if it fits `bound`, else its prefix with the original size and SHA-256."""
    if data is None or len(data) <= bound:
        return data, None, None
    return data[:bound], len(data), hashlib.sha256(data).hexdigest()


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def dead_letter_of(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, error: str
) -> tuple[bytes | None, DeadLetter]:
    """The DLQ record (its key, its value) for one message: bounded whatever the message."""
    kept_key, key_size, key_sha256 = _kept(key, KEPT_KEY_BYTES)
    kept_value, value_size, value_sha256 = _kept(value, KEPT_VALUE_BYTES)
    cut = [
        f"{name} kept as its first {len(kept or b''):,} of {size:,} bytes"
        for name, kept, size in (("key", kept_key, key_size), ("value", kept_value, value_size))
        if size is not None
    ]
    if cut:
        error = f"{error} ({'; '.join(cut)})"
    if len(error) > KEPT_ERROR_CHARS:
        error = error[: KEPT_ERROR_CHARS - 1] + "…"
    letter = DeadLetter(
        schema=SCHEMA_VERSION,
        key=_b64(kept_key),
        value=_b64(kept_value),
        topic=topic,
        partition=partition,
        offset=offset,
        error=error,
        key_size=key_size,
        key_sha256=key_sha256,
        value_size=value_size,
        value_sha256=value_sha256,
    )
    return kept_key, letter


class Outputs:
    """Collects the delivery futures of one batch, so the batch can wait for them at its end."""

    def __init__(self, sender: TransactionalSender, dlq_topic: str, metrics: Metrics) -> None:
        self.sender = sender
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self._pending: list[asyncio.Future[Any]] = []

    async def send(
        self,
        source: EventT[Any],
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Send one record in `source`'s transaction, to `partition` or the key's; the
        returned future resolves to its metadata once the broker has it."""
        try:
            future = await self.sender.send(
                source.message.tp, topic, key, value, timestamp_ms, partition
            )
        except Exception as exc:
            raise OutputFailure(f"sending to {topic} failed: {exc!r}") from exc
        self._pending.append(future)
        return future

    async def dead_letter(self, source: EventT[Any], reason: str, detail: str) -> None:
        """Keep a message the worker cannot use, with its reason (`reason: detail`)."""
        message = source.message
        self.metrics.dead_letters.labels(reason=reason).inc()
        log.warning(
            "dead letter %s[%d]@%d: %s: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
            detail,
            extra=identifiers_of(message.value).log_extra(),
        )
        key, letter = dead_letter_of(
            message.topic,
            message.partition,
            message.offset,
            message.key,
            message.value,
            f"{reason}: {detail}",
        )
        # Faust hands the record time over as float seconds; round() restores the exact ms.
        timestamp_ms = round(message.timestamp * 1000) if message.timestamp else 0
        await self.send(source, self.dlq_topic, key, encode(letter), timestamp_ms)

    @contextlib.asynccontextmanager
    async def dead_letter_on_failure(self, source: EventT[Any]) -> AsyncIterator[None]:
        """Process one message inside: any failure but Kafka's ends in its dead letter
        (reason `unprocessable`), so no message can stop the stage.

        What runs inside must change state only once nothing of the message can fail any
        more (encode outputs first, then write tables and send), or a failure would leave a
        half-processed message behind its dead letter."""
        try:
            yield
        except OutputFailure:
            raise
        except Exception as exc:
            log.exception(
                "a message could not be processed; it goes to the dead letters",
                extra=identifiers_of(source.message.value).log_extra(),
            )
            await self.dead_letter(source, "unprocessable", f"{type(exc).__name__}: {exc}")

    async def delivered(self) -> None:
        """Wait until the broker has every record sent so far; raise the first failure."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
