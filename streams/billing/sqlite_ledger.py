"""The ledger in one SQLite file, the default: embedded, nothing to run.

WAL mode lets readers (audit, report) read while billing writes; `BEGIN IMMEDIATE` makes a
second writer wait for the first, so it sees the offsets the first committed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from streams.billing.ledger import SCHEMA_VERSION, Ledger, LedgerError, Rows

APPLICATION_ID = 0x41445342  # "ADSB": marks an SQLite file as an adstream billing ledger.

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


class SqliteLedger(Ledger):
    """A ledger file; the schema version is `PRAGMA user_version`."""

    DAY = "date(\"timestamp\" / 1000, 'unixepoch')"

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self.where = str(path)

    @classmethod
    def connect(cls, path: Path, *, read_only: bool = False) -> SqliteLedger:
        if read_only and not path.is_file():
            raise LedgerError(f"no ledger at {path}")
        target = path.resolve().as_uri() + ("?mode=ro" if read_only else "?mode=rwc")
        try:
            # Transactions are explicit (BEGIN ... COMMIT in record_batch).
            connection = sqlite3.connect(target, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
        return cls(connection, path).prepared(read_only)

    def _prepare(self, read_only: bool) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 10000")
        if not read_only:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._create_if_empty()
                db.execute("COMMIT")
            except BaseException:
                self.rollback()
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

    def execute(self, statement: str, parameters: Sequence[object] = ()) -> Rows:
        return self._db.execute(statement, parameters)

    def execute_many(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        self._db.executemany(statement, rows)

    def begin_write(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def rollback(self) -> None:
        # A failed COMMIT may have ended the transaction already.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()

    def database_error(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.Error)
