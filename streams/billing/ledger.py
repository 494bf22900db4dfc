"""The billing ledger: one SQLite file holding every charge together with the `ad-served`
offsets it was read up to.

Charges and offsets are written in the same SQLite transaction (`Ledger.record_batch`), so the
file is always a consistent cut of the topic: after a crash at any point, billing resumes from
the stored offsets and neither loses nor doubles a charge. A charge is unique by `request_id`;
a second `AdServed` for one is kept apart as a duplicate, never charged. Records that could not
be read as a charge are kept whole in `rejected`, in the same transaction.

Money is integer micros here, as in `models.money`; Decimal exists only in reports.

Others read the ledger too (`adstream audit`): `Ledger.open(path, read_only=True)` and iterate
`charges()`. WAL mode lets them read while billing writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

import msgspec

SCHEMA_VERSION = 1
"""Kept in the file (`PRAGMA user_version`); a file of another version is refused."""
APPLICATION_ID = 0x41445342  # "ADSB": marks an SQLite file as an adstream billing ledger.

MAX_CHARGE_MICROS = 10**15
"""One charge costs at most 1e9 currency units; with it, SQLite's 64-bit sums stay exact for
any realistic ledger (and SQLite raises rather than wraps if one ever overflows)."""

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE offsets (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL
) STRICT;
CREATE TABLE charges (
    request_id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL CHECK (cost_micros >= 0),
    currency TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    UNIQUE (partition, offset)
) STRICT;
CREATE TABLE duplicates (
    request_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    currency TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (partition, offset)
) STRICT;
CREATE TABLE rejected (
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    error TEXT NOT NULL,
    key BLOB,
    value BLOB,
    PRIMARY KEY (partition, offset)
) STRICT;
"""
_TABLES = {"meta", "offsets", "charges", "duplicates", "rejected"}
_CHARGE_COLUMNS = "request_id, campaign_id, timestamp, cost_micros, currency, partition, offset"


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


class Ledger:
    """An open ledger file. Use `Ledger.open`; close it (or use it as a context manager)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path | str, *, read_only: bool = False) -> Ledger:
        """Open the ledger at `path`, creating it unless `read_only`.

        Raises `LedgerError` when the file cannot be opened or created, is not a ledger, or
        was written by another schema version.
        """
        path = Path(path)
        if read_only and not path.is_file():
            raise LedgerError(f"no ledger at {path}")
        target = path.resolve().as_uri() + ("?mode=ro" if read_only else "?mode=rwc")
        try:
            # Transactions are explicit (BEGIN ... COMMIT in record_batch).
            connection = sqlite3.connect(target, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
        ledger = cls(connection, path)
        try:
            ledger._prepare(read_only)
        except sqlite3.Error as exc:
            connection.close()
            raise LedgerError(f"cannot use the ledger {path}: {exc}") from exc
        except LedgerError:
            connection.close()
            raise
        return ledger

    def _prepare(self, read_only: bool) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 10000")
        if not read_only:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._create_if_empty()
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        self._check_version()
        if not read_only:
            # A durable commit per batch; WAL keeps readers (audit, report) off the writer's way.
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")

    def _create_if_empty(self) -> None:
        tables = self._tables()
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if tables or version:
            return
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_version(self) -> None:
        (application_id,) = self._db.execute("PRAGMA application_id").fetchone()
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if application_id != APPLICATION_ID:
            raise LedgerError(f"{self.path} is an SQLite file but not an adstream billing ledger")
        if version != SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger {self.path} has schema version {version}; this adstream reads "
                f"version {SCHEMA_VERSION} only"
            )
        missing = _TABLES - self._tables()
        if missing:
            raise LedgerError(f"the ledger {self.path} is damaged: no {', '.join(sorted(missing))}")

    def _tables(self) -> set[str]:
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}

    def close(self) -> None:
        self._db.close()

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
        row = self._db.execute("SELECT value FROM meta WHERE key = 'topic'").fetchone()
        return None if row is None else str(row[0])

    def bind(self, topic: str) -> None:
        """Tie the ledger to `topic`: its offsets mean nothing for another topic."""
        bound = self.topic
        if bound is None:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('topic', ?)", (topic,))
        elif bound != topic:
            raise LedgerError(f"the ledger {self.path} bills topic {bound!r}, not {topic!r}")

    def offsets(self) -> dict[int, int]:
        """Partition -> the next offset to read (everything before it is in the ledger)."""
        rows = self._db.execute("SELECT partition, next_offset FROM offsets")
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
        metrics, or to prove crash safety by dying there).
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            stored = self.offsets()
            charged, duplicates, kept = 0, [], 0
            for charge in charges:
                self._check_unread(stored, charge.partition, charge.offset)
                cursor = db.execute(
                    f"INSERT INTO charges ({_CHARGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (request_id) DO NOTHING",
                    _row(charge),
                )
                if cursor.rowcount:
                    charged += 1
                else:
                    db.execute(
                        f"INSERT INTO duplicates ({_CHARGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        _row(charge),
                    )
                    duplicates.append(charge)
            for record in rejected:
                self._check_unread(stored, record.partition, record.offset)
                db.execute(
                    "INSERT INTO rejected (partition, offset, error, key, value)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (record.partition, record.offset, record.error, record.key, record.value),
                )
                kept += 1
            for partition, next_offset in offsets.items():
                if next_offset < stored.get(partition, 0):
                    raise LedgerConflict(
                        f"{self.path}: partition {partition} would move back from offset "
                        f"{stored[partition]} to {next_offset}; is another billing process "
                        "writing to this ledger?"
                    )
            db.executemany(
                "INSERT INTO offsets (partition, next_offset) VALUES (?, ?)"
                " ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
                offsets.items(),
            )
            if before_commit is not None:
                before_commit()
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return Recorded(charged=charged, duplicates=tuple(duplicates), rejected=kept)

    def _check_unread(self, stored: Mapping[int, int], partition: int, offset: int) -> None:
        if offset < stored.get(partition, 0):
            raise LedgerConflict(
                f"{self.path}: partition {partition} offset {offset} was recorded already "
                f"(the ledger is at {stored[partition]}); is another billing process writing "
                "to this ledger?"
            )

    def charges(self) -> Iterator[Charge]:
        """Every charge, in the order of the topic (partition, offset)."""
        rows = self._db.execute(f"SELECT {_CHARGE_COLUMNS} FROM charges ORDER BY partition, offset")
        for row in rows:
            yield Charge(*row)

    def duplicates(self) -> Iterator[Charge]:
        """Every `AdServed` whose request_id had been charged already, in topic order."""
        rows = self._db.execute(
            f"SELECT {_CHARGE_COLUMNS} FROM duplicates ORDER BY partition, offset"
        )
        for row in rows:
            yield Charge(*row)

    def rejected(self) -> Iterator[Rejected]:
        """Every record that was not a chargeable `AdServed`, in topic order."""
        rows = self._db.execute(
            "SELECT partition, offset, error, key, value FROM rejected ORDER BY partition, offset"
        )
        for row in rows:
            yield Rejected(*row)

    def counts(self) -> Counts:
        (charges,) = self._db.execute("SELECT count(*) FROM charges").fetchone()
        (duplicates,) = self._db.execute("SELECT count(*) FROM duplicates").fetchone()
        (rejected,) = self._db.execute("SELECT count(*) FROM rejected").fetchone()
        return Counts(charges=charges, duplicates=duplicates, rejected=rejected)

    def totals(self) -> list[Total]:
        """Charge counts and sums per campaign, currency and UTC day of event time."""
        rows = self._db.execute(
            "SELECT campaign_id, currency, date(timestamp / 1000, 'unixepoch') AS day,"
            " count(*), sum(cost_micros) FROM charges"
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


def _rollback(db: sqlite3.Connection) -> None:
    # A failed COMMIT may have ended the transaction already.
    if db.in_transaction:
        db.execute("ROLLBACK")
