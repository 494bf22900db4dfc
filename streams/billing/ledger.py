"""The billing ledger: every charge together with the `ad-served` offsets it was read up to,
in an SQLite file (the default, `streams.billing.sqlite_ledger`) or a PostgreSQL database
(`streams.billing.postgres_ledger`).

Charges and offsets are written in the same database transaction (`Ledger.record_batch`), so
the ledger is always a consistent cut of the topic: after a crash at any point, billing resumes
from the stored offsets and neither loses nor doubles a charge. A charge is unique by
`request_id`; a second `AdServed` for one is kept apart as a duplicate, never charged. Records
that could not be read as a charge are kept whole in `rejected`, in the same transaction.

Money is integer micros here, as in `models.money`; Decimal exists only in reports.

Others read the ledger too (`adstream audit`): `Ledger.open(target, read_only=True)` and
iterate `charges()`, while billing writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

import msgspec

SCHEMA_VERSION = 1
"""Kept in the ledger; a ledger of another version is refused."""

MAX_CHARGE_MICROS = 10**15
"""One charge costs at most 1e9 currency units; with it, 64-bit sums stay exact for any
realistic ledger (and both databases raise rather than wrap if one ever overflows)."""

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

# Quoted: OFFSET is a reserved word in PostgreSQL (SQLite takes the quotes as well).
_CHARGE_COLUMNS = 'request_id, campaign_id, "timestamp", cost_micros, currency, partition, "offset"'


class LedgerError(Exception):
    """The ledger cannot be used: unreadable, unwritable, not a ledger, another schema version,
    or bound to another topic. The message says which and where."""


class LedgerConflict(LedgerError):
    """A batch holds records the ledger has already read past: someone else writes to it."""


class Charge(msgspec.Struct, frozen=True):
    """One served impression, charged once, with where it was read from."""

    request_id: str
    campaign_id: str
    timestamp: int
    """Event time (Unix ms) of the request."""
    cost_micros: int
    currency: str
    partition: int
    offset: int
    """Position of the `AdServed` record in `ad-served`."""


class Rejected(msgspec.Struct, frozen=True):
    """A record of `ad-served` that is not a chargeable `AdServed`, kept whole."""

    partition: int
    offset: int
    error: str
    key: bytes | None
    value: bytes | None


class Recorded(msgspec.Struct, frozen=True):
    """What one `record_batch` did."""

    charged: int
    duplicates: tuple[Charge, ...]
    """Charges of the batch whose request_id was charged before (or earlier in the batch)."""
    rejected: int


class Total(msgspec.Struct, frozen=True):
    """Charges of one campaign in one currency on one UTC day of event time."""

    campaign_id: str
    currency: str
    day: str
    """ISO date, UTC, of the charges' event time."""
    charges: int
    cost_micros: int


class Counts(msgspec.Struct, frozen=True):
    charges: int
    duplicates: int
    rejected: int


class Rows(Protocol):
    """What a statement returns, in both databases' drivers."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Ledger(ABC):
    """An open ledger. Use `Ledger.open`; close it (or use it as a context manager).

    The rules (what a batch writes, what conflicts) live here once; a database's module says
    how to open, create and lock it. Statements use `?` placeholders.
    """

    where: str
    """The file, or the URL without its password: for messages."""
    DAY: ClassVar[str]
    """SQL for the UTC day (ISO date) of a charge's event time."""

    @staticmethod
    def open(target: Path | str, *, read_only: bool = False) -> Ledger:
        """Open the ledger at `target` (a `postgresql://` URL, else an SQLite file), creating
        it unless `read_only`.

        Raises `LedgerError` when it cannot be opened or created, is not a ledger, or was
        written by another schema version.
        """
        # Imported when used: the PostgreSQL driver loads libpq.
        if str(target).startswith(POSTGRES_SCHEMES):
            from streams.billing.postgres_ledger import PostgresLedger

            return PostgresLedger.connect(str(target), read_only=read_only)
        from streams.billing.sqlite_ledger import SqliteLedger

        return SqliteLedger.connect(Path(target), read_only=read_only)

    @abstractmethod
    def execute(self, statement: str, parameters: Sequence[object] = ()) -> Rows: ...

    @abstractmethod
    def execute_many(self, statement: str, rows: Iterable[Sequence[object]]) -> None: ...

    def insert_each(self, statement: str, rows: Sequence[Sequence[object]]) -> list[bool]:
        """Run the INSERT `statement` for each row in order; whether each inserted its row."""
        return [bool(self.execute(statement, row).rowcount) for row in rows]

    @abstractmethod
    def begin_write(self) -> None:
        """Begin a transaction that no other writer's can interleave with."""

    @abstractmethod
    def rollback(self) -> None:
        """End the transaction in progress, if any, without its writes."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def database_error(self, error: BaseException) -> bool:
        """Whether `error` is the driver's (to report as a `LedgerError`)."""

    @abstractmethod
    def _prepare(self, read_only: bool) -> None:
        """Create the schema of a new ledger (unless `read_only`), or check an existing one's."""

    def prepared(self, read_only: bool) -> Self:
        """This just-opened ledger, prepared (its `connect` ends with it); closed again if it
        cannot be used."""
        try:
            self._prepare(read_only)
        except BaseException as exc:
            self.close()
            if self.database_error(exc):
                raise LedgerError(f"cannot use the ledger {self.where}: {exc}") from exc
            raise
        return self

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def topic(self) -> str | None:
        """The topic this ledger bills, once `bind` has named it."""
        row = self.execute("SELECT value FROM meta WHERE key = 'topic'").fetchone()
        return None if row is None else str(row[0])

    def bind(self, topic: str) -> None:
        """Tie the ledger to `topic`: its offsets mean nothing for another topic."""
        bound = self.topic
        if bound is None:
            self.execute("INSERT INTO meta (key, value) VALUES ('topic', ?)", (topic,))
        elif bound != topic:
            raise LedgerError(f"the ledger {self.where} bills topic {bound!r}, not {topic!r}")

    def offsets(self) -> dict[int, int]:
        """Partition -> the next offset to read (everything before it is in the ledger)."""
        rows = self.execute("SELECT partition, next_offset FROM offsets")
        return {partition: offset for partition, offset in rows}

    def record_batch(
        self,
        charges: Iterable[Charge],
        offsets: Mapping[int, int],
        *,
        rejected: Iterable[Rejected] = (),
        before_commit: Callable[[], None] | None = None,
    ) -> Recorded:
        """Charge `charges` (in order), keep `rejected`, and move each partition's next offset
        to `offsets[partition]`, all in one transaction: all of it lands, or none.

        `before_commit` runs after every write and before COMMIT (an operational hook: for
        metrics, or to prove crash safety by dying there). The database's own errors are
        raised as `LedgerError`.
        """
        try:
            self.begin_write()
            recorded = self._write(charges, offsets, rejected)
            if before_commit is not None:
                before_commit()
            self.execute("COMMIT")
        except BaseException as exc:
            self.rollback()
            if self.database_error(exc):
                raise LedgerError(f"cannot write to the ledger {self.where}: {exc}") from exc
            raise
        return recorded

    def _write(
        self, charges: Iterable[Charge], offsets: Mapping[int, int], rejected: Iterable[Rejected]
    ) -> Recorded:
        stored = self.offsets()
        charges, rejected = list(charges), list(rejected)
        for partition, offset in [(c.partition, c.offset) for c in charges] + [
            (r.partition, r.offset) for r in rejected
        ]:
            self._check_unread(stored, partition, offset)
        inserted = self.insert_each(
            f"INSERT INTO charges ({_CHARGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (request_id) DO NOTHING",
            [_row(charge) for charge in charges],
        )
        duplicates = [charge for charge, new in zip(charges, inserted, strict=True) if not new]
        self.execute_many(
            f"INSERT INTO duplicates ({_CHARGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [_row(charge) for charge in duplicates],
        )
        self.execute_many(
            'INSERT INTO rejected (partition, "offset", error, key, value) VALUES (?, ?, ?, ?, ?)',
            [(r.partition, r.offset, r.error, r.key, r.value) for r in rejected],
        )
        for partition, next_offset in offsets.items():
            if next_offset < stored.get(partition, 0):
                raise LedgerConflict(
                    f"{self.where}: partition {partition} would move back from offset "
                    f"{stored[partition]} to {next_offset}; is another billing process "
                    "writing to this ledger?"
                )
        self.execute_many(
            "INSERT INTO offsets (partition, next_offset) VALUES (?, ?)"
            " ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
            offsets.items(),
        )
        return Recorded(
            charged=len(charges) - len(duplicates),
            duplicates=tuple(duplicates),
            rejected=len(rejected),
        )

    def _check_unread(self, stored: Mapping[int, int], partition: int, offset: int) -> None:
        if offset < stored.get(partition, 0):
            raise LedgerConflict(
                f"{self.where}: partition {partition} offset {offset} was recorded already "
                f"(the ledger is at {stored[partition]}); is another billing process writing "
                "to this ledger?"
            )

    def charges(self) -> Iterator[Charge]:
        """Every charge, in the order of the topic (partition, offset)."""
        rows = self.execute(f'SELECT {_CHARGE_COLUMNS} FROM charges ORDER BY partition, "offset"')
        for row in rows:
            yield Charge(*row)

    def duplicates(self) -> Iterator[Charge]:
        """Every `AdServed` whose request_id had been charged already, in topic order."""
        rows = self.execute(
            f'SELECT {_CHARGE_COLUMNS} FROM duplicates ORDER BY partition, "offset"'
        )
        for row in rows:
            yield Charge(*row)

    def rejected(self) -> Iterator[Rejected]:
        """Every record that was not a chargeable `AdServed`, in topic order."""
        rows = self.execute(
            'SELECT partition, "offset", error, key, value FROM rejected'
            ' ORDER BY partition, "offset"'
        )
        for row in rows:
            yield Rejected(*row)

    def counts(self) -> Counts:
        (charges,) = self.execute("SELECT count(*) FROM charges").fetchone()
        (duplicates,) = self.execute("SELECT count(*) FROM duplicates").fetchone()
        (rejected,) = self.execute("SELECT count(*) FROM rejected").fetchone()
        return Counts(charges=charges, duplicates=duplicates, rejected=rejected)

    def totals(self) -> list[Total]:
        """Charge counts and sums per campaign, currency and UTC day of event time."""
        rows = self.execute(
            f"SELECT campaign_id, currency, {self.DAY} AS day,"
            " count(*), CAST(sum(cost_micros) AS BIGINT) FROM charges"
            " GROUP BY campaign_id, currency, day ORDER BY campaign_id, currency, day"
        )
        return [Total(*row) for row in rows]


def _row(charge: Charge) -> tuple[str, str, int, int, str, int, int]:
    return (
        charge.request_id,
        charge.campaign_id,
        charge.timestamp,
        charge.cost_micros,
        charge.currency,
        charge.partition,
        charge.offset,
    )
