"""The worker's Faust tables, typed: msgspec values in changelogged key-value tables.

| table     | key                     | value         | on the partition of                 |
| --------- | ----------------------- | ------------- | ----------------------------------- |
| seen      | request_id              | `SeenRequest` | the request (its user)              |
| frequency | campaign_id + user_id   | `CapEntry`    | the user                            |
| leases    | campaign_id + partition | `Lease`       | the deciding partition              |
| banks     | campaign_id             | `Bank`        | the campaign's key on budget-leases |

Every table is partitioned like `ad-requests` (and `budget-leases`, which has as many
partitions): a request is decided where its user's state is, a lease lives with the partition
that spends it, and a bank with the partition its campaign's asks arrive on.

`frequency` holds the served impression times of every identified user for every campaign,
capped or not, for the impression history (`streams.state.frequency`).

Every value that can expire carries the partition it lives in, so that the expiry index can be
rebuilt from a restored table (`streams.state.expiry`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import faust
import msgspec
from faust.types import EventT, TableT

from streams.state.frequency import Impressions
from streams.state.leases import Bank, Lease
from streams.worker.committed_store import Store as CommittedStore
from streams.worker.event_context import event_context

V = TypeVar("V", bound=msgspec.Struct)

DEDUPE_WINDOW_MS = 25 * 3_600_000
"""A request_id is remembered this long in event time: the design's 24 h plus an hour late."""


class SeenRequest(msgspec.Struct, array_like=True):
    t: int
    partition: int


class CapEntry(msgspec.Struct, array_like=True):
    impressions: Impressions
    partition: int


def frequency_key(campaign_id: str, user_id: str) -> str:
    # The unit separator cannot appear in either id's JSON text unescaped, so keys never clash.
    return f"{campaign_id}\x1f{user_id}"


def split_frequency_key(key: str) -> tuple[str, str]:
    """The (campaign_id, user_id) of a `frequency_key`."""
    campaign_id, user_id = key.split("\x1f", 1)
    return campaign_id, user_id


def lease_key(campaign_id: str, partition: int) -> str:
    # The partition is part of the key: the memory store holds every partition in one dict.
    return f"{campaign_id}\x1f{partition}"


class RawTable(faust.Table[bytes, bytes]):
    """A table of bytes we encode ourselves: Faust stores and ships them as they are.

    Faust derives a table's codecs from its key and value types, and a `bytes` type gets
    "json", which cannot hold msgpack. The app declares every table with this class
    (`faust.App(Table=RawTable)`).
    """

    def _serializer_from_type(self, typ: Any) -> str:
        return "raw"


TABLES = ("seen", "frequency", "leases", "banks")


def changelog_partitions(app_id: str, partitions: int) -> dict[str, int]:
    """The changelog topic of every table (as Faust names it) and its partition count."""
    return {f"{app_id}-{name}-changelog": partitions for name in TABLES}


ChangelogSend = Callable[
    [EventT[Any], str, bytes, bytes | None, int | None, int | None],
    Awaitable[asyncio.Future[Any]],
]
"""How a table sends a changelog record (source event, topic, key, value, timestamp,
partition): `Outputs.send`, into the transaction of the event that wrote it; the future
resolves to the record's metadata."""


class TypedTable(Generic[V]):
    """A Faust table of str keys and msgspec values, encoded once at this boundary.

    Writes wait in a buffer until the stage's batch ends (`flush`), and reads see them: a key
    written many times in a batch (a campaign's spend, a busy user's caps) costs one changelog
    record, and each record is sent straight into the transaction of the event that wrote it.
    Faust's own write path (`table[key] = value`) would send a record per write through its
    producer buffer, with a callback each: per decision, more CPU than deciding.
    """

    def __init__(self, table: TableT[Any, Any], kind: type[V]) -> None:
        self.table = table
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(kind)
        # key -> (encoded value, or None for a deletion; the event that wrote it)
        self._unflushed: dict[bytes, tuple[bytes | None, EventT[Any]]] = {}

    def _raw(self, key: bytes) -> bytes | None:
        unflushed = self._unflushed.get(key)
        if unflushed is not None:
            return unflushed[0]
        raw: bytes | None = self.table.data.get(key)
        return raw

    def get(self, key: str) -> V | None:
        raw = self._raw(key.encode())
        return None if raw is None else self._decoder.decode(raw)

    def __contains__(self, key: str) -> bool:
        return self._raw(key.encode()) is not None

    def set(self, key: str, value: V, source: EventT[Any]) -> None:
        """Write `value`; `source` is the event it belongs to (its partition, its transaction)."""
        self._unflushed[key.encode()] = (self._encoder.encode(value), source)

    def delete(self, key: str, source: EventT[Any]) -> None:
        self._unflushed[key.encode()] = (None, source)

    async def flush(self, send: ChangelogSend) -> None:
        """Apply the batch's writes to the local store and send them to the changelog (a
        `CommittedStore` writes them to disk once their transaction has committed)."""
        unflushed, self._unflushed = self._unflushed, {}
        if not unflushed:
            return
        store = self.table.data
        topic = self.table.changelog_topic.get_topic_name()
        for key, (raw, source) in unflushed.items():
            # The store keeps each partition apart (RocksDB: a database each) and takes the
            # partition from the current event.
            with event_context(source):
                if raw is None:
                    with contextlib.suppress(KeyError):
                        del store[key]
                else:
                    store[key] = raw
            record = await send(source, topic, key, raw, None, source.message.partition)
            if isinstance(store, CommittedStore):
                store.sent(source.message.partition, source.message.tp, record)

    def items(self) -> Iterator[tuple[str, V]]:
        """What the store holds (call between batches: unflushed writes are left out)."""
        for key, raw in self.table.data.items():
            yield key.decode(), self._decoder.decode(raw)

    def __len__(self) -> int:
        return len(self.table.data)


class Tables:
    """All of the worker's tables, declared on one app, each with `partitions` partitions."""

    def __init__(self, app: faust.App, partitions: int) -> None:
        def table(name: str, kind: type[V]) -> TypedTable[V]:
            declared = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes)
            return TypedTable(declared, kind)

        self.seen = table("seen", SeenRequest)
        self.frequency = table("frequency", CapEntry)
        self.leases = table("leases", Lease)
        self.banks = table("banks", Bank)

    def leases_at(self, campaign_id: str, partitions: Iterable[int]) -> list[Lease]:
        """The campaign's leases on these partitions, those that exist."""
        found = (self.leases.get(lease_key(campaign_id, p)) for p in partitions)
        return [lease for lease in found if lease is not None]
