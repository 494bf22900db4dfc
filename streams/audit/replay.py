"""Reading the five topics into an `Auditor`: thin, all the checking is `verify.py`'s.

One consumer without a group (it commits nothing and disturbs no one), read_committed so
that aborted transactions never count, with every partition assigned by hand. The end offsets
(for read_committed: the last stable offsets) are taken once at the start and reading stops
there, so the audit sees one cut of a live deployment.

Where each topic starts, for a window starting at `--from`:

| topic | from | why |
| --- | --- | --- |
| `campaigns` | the beginning | every configuration a decision may name |
| `ad-served` | the beginning | caps and budgets need every impression before the window |
| `budget-leases` | the beginning | a lease is the sum of every grant and return before |
| `ad-requests` | `--from` minus 48 h (`offsets_for_times`) | a request re-sent inside the window is recognised as such |
| `ad-denied` | `--from` (`offsets_for_times`) | only denials inside the window are checked |

Event times are not ordered within a partition (late requests are legitimate), so `--to` does
not end a partition early: records stamped after it are read and left out by the verifier.
`offsets_for_times` gives the first offset stamped at or after a time, so nothing inside the
window is skipped at its start.
"""  # noqa: E501

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.admin import partition_counts
from streams.audit.findings import Record, TopicKind
from streams.audit.verify import REQUEST_CONTEXT_MS, Auditor
from streams.topics import Topics

Progress = Callable[[int, int], None]
"""Called with (records read, records to read) as the replay goes."""

MAX_RECORDS = 5000
"""Records handed over per fetch round."""


class ReplayError(Exception):
    """The topics cannot be read: missing, unreachable, or reading stalled."""


class Replayed(msgspec.Struct, frozen=True):
    ends: dict[str, dict[int, int]]
    """Per topic kind, partition -> the end offset read up to (exclusive)."""
    records: int
    seconds: float


def topic_names(topics: Topics) -> dict[TopicKind, str]:
    return {
        "campaigns": topics.campaigns,
        "requests": topics.requests,
        "served": topics.served,
        "denied": topics.denied,
        "leases": topics.leases,
    }


async def replay(
    bootstrap: str,
    topics: Topics,
    auditor: Auditor,
    *,
    progress: Progress | None = None,
    stall_s: float = 60.0,
) -> Replayed:
    """Read the topics into `auditor` (its window places the starts); return what was read."""
    started = time.monotonic()
    names = topic_names(topics)
    counts = await _partition_counts_of(bootstrap, list(names.values()))
    missing = [name for name in names.values() if name not in counts]
    if missing:
        raise ReplayError(
            f"no topic {', '.join(missing)} at {bootstrap} (is ADSTREAM_TOPIC_PREFIX right?)"
        )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    try:
        await consumer.start()
    except Exception as exc:
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        kinds = {
            TopicPartition(name, partition): kind
            for kind, name in names.items()
            for partition in range(counts[name])
        }
        ranges = await _ranges(consumer, kinds, auditor.window.start_ms)
        todo = {tp: bounds for tp, bounds in ranges.items() if bounds[0] < bounds[1]}
        consumer.assign(list(todo))
        for tp, (start, _) in todo.items():
            consumer.seek(tp, start)
        total = sum(end - start for start, end in todo.values())
        read = await _read(consumer, kinds, todo, auditor, total, progress, stall_s)
    finally:
        await consumer.stop()
    ends: dict[str, dict[int, int]] = {kind: {} for kind in names}
    for tp, (_, end) in ranges.items():
        ends[kinds[tp]][tp.partition] = end
    return Replayed(ends, read, time.monotonic() - started)


async def _partition_counts_of(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
    except Exception as exc:
        await admin.close()
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        # Describes existing topics only: describing a missing one may auto-create it.
        return await partition_counts(admin, names)
    finally:
        await admin.close()


async def _ranges(
    consumer: AIOKafkaConsumer, kinds: dict[TopicPartition, TopicKind], start_ms: int | None
) -> dict[TopicPartition, tuple[int, int]]:
    partitions = list(kinds)
    ends = await consumer.end_offsets(partitions)
    starts = await consumer.beginning_offsets(partitions)
    if start_ms is not None:
        wanted = {
            tp: max(0, start_ms - (REQUEST_CONTEXT_MS if kind == "requests" else 0))
            for tp, kind in kinds.items()
            if kind in ("requests", "denied")
        }
        found = await consumer.offsets_for_times(wanted)
        for tp in wanted:
            at = found.get(tp)
            starts[tp] = ends[tp] if at is None else max(starts[tp], at.offset)
    return {tp: (starts[tp], ends[tp]) for tp in partitions}


async def _read(
    consumer: AIOKafkaConsumer,
    kinds: dict[TopicPartition, TopicKind],
    todo: dict[TopicPartition, tuple[int, int]],
    auditor: Auditor,
    total: int,
    progress: Progress | None,
    stall_s: float,
) -> int:
    done: set[TopicPartition] = set()
    read = 0
    last_read, last_change = -1, time.monotonic()
    while len(done) < len(todo):
        batches = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
        for tp, records in batches.items():
            end, kind = todo[tp][1], kinds[tp]
            for record in records:
                if record.offset >= end:
                    break
                auditor.add(
                    kind,
                    Record(tp.partition, record.offset, record.timestamp, record.key, record.value),
                )
        read = 0
        for tp, (start, end) in todo.items():
            position = end if tp in done else min(await consumer.position(tp), end)
            read += position - start
            if position >= end and tp not in done:
                done.add(tp)
                consumer.pause(tp)
        if progress is not None:
            progress(read, total)
        now = time.monotonic()
        if read != last_read:
            last_read, last_change = read, now
        elif now - last_change > stall_s:
            stuck = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in todo if tp not in done)
            raise ReplayError(f"no progress for {stall_s:.0f} s reading {stuck}")
    return read
