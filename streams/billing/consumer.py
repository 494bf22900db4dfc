"""The Kafka side of billing: read `ad-served` with read_committed and hand each batch to the
ledger, together with the positions it was read up to.

No consumer group and no Kafka offset commits: the ledger is the source of truth. Every
partition of the topic is assigned by hand and positioned at the ledger's stored offset (or
the beginning for a partition the ledger has not seen), so a restart after any crash resumes
exactly where the last committed ledger transaction ended. Records the consumer skips without
returning them (transaction markers, aborted transactions) only move positions forward.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, OffsetOutOfRangeError

from streams.billing.ledger import Charge, Ledger, Rejected
from streams.billing.records import read_record

log = logging.getLogger(__name__)

CLIENT_ID = "adstream-billing"
RETRY_S = 1.0
"""Pause between attempts to reach the broker."""
FETCH_WAIT_MS = 200
"""How long one poll waits for records: also how soon a stop request is noticed."""


class BillingError(Exception):
    """Billing cannot go on: the broker is unreachable, the topic is missing, or records the
    ledger still needs are gone from the log. The message says which."""


class Progress(msgspec.Struct):
    """Where a billing run stands."""

    charges: int
    """Charges in the ledger, from earlier runs included."""
    charged: int
    """Charged by this run."""
    duplicates: int
    rejected: int
    lag: int | None
    """Committed records not read yet (None until the broker has told)."""
    caught_up: bool = False


async def run(
    bootstrap: str,
    topic: str,
    ledger: Ledger,
    stop: asyncio.Event,
    *,
    until_caught_up: bool = False,
    batch_size: int = 1000,
    connect_timeout_s: float = 30.0,
    before_commit: Callable[[], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval_s: float = 2.0,
) -> Progress:
    """Bill `topic` into `ledger` until `stop` is set (after the batch in progress), or, with
    `until_caught_up`, once the end offsets seen at start are reached.

    `before_commit` is passed to `Ledger.record_batch` for every batch. `on_progress` gets the
    `Progress` every `progress_interval_s`; the final one is returned.
    """
    consumer, partitions = await _connect(bootstrap, topic, connect_timeout_s)
    try:
        ledger.bind(topic)  # once the topic is known to exist: a typo binds nothing
        await _position(consumer, ledger, partitions)
        targets = await consumer.end_offsets(partitions) if until_caught_up else {}
        positions = {tp: await consumer.position(tp) for tp in partitions}
        progress = Progress(
            charges=ledger.counts().charges, charged=0, duplicates=0, rejected=0, lag=None
        )
        reported = time.monotonic()
        while not stop.is_set():
            if until_caught_up and all(positions[tp] >= end for tp, end in targets.items()):
                progress.caught_up = True
                break
            try:
                fetched = await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=batch_size)
            except OffsetOutOfRangeError as exc:
                missing = ", ".join(f"{tp.partition}@{at}" for tp, at in exc.args[0].items())
                raise BillingError(
                    f"{topic}: the ledger's next records ({missing}, partition@offset) are no "
                    "longer in the log (retention?); billing would lose their charges"
                ) from exc
            charges: list[Charge] = []
            rejected: list[Rejected] = []
            for tp, records in fetched.items():
                for record in records:
                    item = read_record(tp.partition, record.offset, record.key, record.value)
                    if isinstance(item, Charge):
                        charges.append(item)
                    else:
                        rejected.append(item)
            moved = {}
            for tp in partitions:
                position = await consumer.position(tp)
                if position != positions[tp]:
                    moved[tp.partition] = positions[tp] = position
            if moved:
                recorded = ledger.record_batch(
                    charges, moved, rejected=rejected, before_commit=before_commit
                )
                _log_batch(topic, recorded.duplicates, rejected)
                progress.charged += recorded.charged
                progress.charges += recorded.charged
                progress.duplicates += len(recorded.duplicates)
                progress.rejected += recorded.rejected
            if on_progress is not None and time.monotonic() - reported >= progress_interval_s:
                progress.lag = _lag(consumer, positions, targets)
                on_progress(progress)
                reported = time.monotonic()
        progress.lag = _lag(consumer, positions, targets)
        return progress
    finally:
        await consumer.stop()


async def _connect(
    bootstrap: str, topic: str, timeout_s: float
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started read_committed consumer and the partitions of `topic`, trying to reach the
    broker for up to `timeout_s`."""
    partitions = await _partitions(bootstrap, topic, timeout_s)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=CLIENT_ID,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        # A missing offset must stop billing, never skip records silently.
        auto_offset_reset="none",
    )
    try:
        # The broker just answered the admin client: one attempt.
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (KafkaConnectionError, TimeoutError) as exc:
        await consumer.stop()
        raise BillingError(f"cannot reach Kafka at {bootstrap}: {exc or 'timeout'}") from exc
    return consumer, [TopicPartition(topic, partition) for partition in partitions]


async def _partitions(bootstrap: str, topic: str, timeout_s: float) -> list[int]:
    """The partitions of `topic`, trying to reach the broker for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
        try:
            await asyncio.wait_for(admin.start(), max(deadline - time.monotonic(), 0.1))
            break
        except (KafkaConnectionError, TimeoutError) as exc:
            await admin.close()
            if time.monotonic() + RETRY_S > deadline:
                raise BillingError(
                    f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s: {exc or 'timeout'}"
                ) from exc
            log.warning("Kafka at %s not reachable yet, retrying: %s", bootstrap, exc)
            await asyncio.sleep(RETRY_S)
    try:
        # Only describe a topic that exists: describing a missing one may auto-create it.
        if topic not in await admin.list_topics():
            raise BillingError(f"topic {topic} does not exist (is ADSTREAM_TOPIC_PREFIX right?)")
        (described,) = await admin.describe_topics([topic])
        return sorted(partition["partition"] for partition in described["partitions"])
    finally:
        await admin.close()


async def _position(
    consumer: AIOKafkaConsumer, ledger: Ledger, partitions: list[TopicPartition]
) -> None:
    """Assign `partitions` and seek each to the ledger's offset (the beginning if none)."""
    consumer.assign(partitions)
    stored = ledger.offsets()
    for tp in partitions:
        if tp.partition in stored:
            consumer.seek(tp, stored[tp.partition])
        else:
            await consumer.seek_to_beginning(tp)
    log.info(
        "billing %s from %s",
        partitions[0].topic if partitions else "?",
        ", ".join(f"{tp.partition}@{stored.get(tp.partition, 'start')}" for tp in partitions),
    )


def _lag(
    consumer: AIOKafkaConsumer,
    positions: dict[TopicPartition, int],
    targets: dict[TopicPartition, int],
) -> int | None:
    """Committed records not read yet, from the last fetches (or the end offsets seen at start
    for partitions not fetched yet); None when neither is known."""
    lag = 0
    for tp, position in positions.items():
        end: int | None = consumer.last_stable_offset(tp)
        if end is None:
            end = targets.get(tp)
        if end is None:
            return None
        lag += max(0, end - position)
    return lag


def _log_batch(topic: str, duplicates: tuple[Charge, ...], rejected: list[Rejected]) -> None:
    for charge in duplicates:
        log.warning(
            "duplicate AdServed at %s[%d]@%d not charged again",
            topic,
            charge.partition,
            charge.offset,
            extra={"request_id": charge.request_id, "campaign_id": charge.campaign_id},
        )
    for record in rejected:
        log.warning("rejected %s[%d]@%d: %s", topic, record.partition, record.offset, record.error)
