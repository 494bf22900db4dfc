"""The ledger in a PostgreSQL database (`--ledger postgresql://USER@HOST:PORT/DB`), for
ledgers that outgrow one machine's file or that other systems query.

Its tables live in their own schema, `adstream_billing`, of the database the URL names; the
first writer creates it. A batch's transaction first locks the offsets table against other
writers (readers are not blocked), so a second billing process sees the offsets the first
committed and is refused rather than doubling charges, as with SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import pq
from psycopg.rows import TupleRow

from streams.billing.ledger import SCHEMA_VERSION, Ledger, LedgerError, Rows

SCHEMA = "adstream_billing"
CREATE_LOCK = 0x41445342
"""Advisory lock key serialising the creation of the schema by two first writers."""
CONNECT_TIMEOUT_S = 10

_TABLES = f"""
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE {SCHEMA}.offsets (
    partition INTEGER PRIMARY KEY,
    next_offset BIGINT NOT NULL
);
CREATE TABLE {SCHEMA}.charges (
    request_id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    "timestamp" BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL CHECK (cost_micros >= 0),
    currency TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    UNIQUE (partition, "offset")
);
CREATE TABLE {SCHEMA}.duplicates (
    request_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    "timestamp" BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    currency TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    PRIMARY KEY (partition, "offset")
);
CREATE TABLE {SCHEMA}.rejected (
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    error TEXT NOT NULL,
    key BYTEA,
    value BYTEA,
    PRIMARY KEY (partition, "offset")
);
INSERT INTO {SCHEMA}.meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


def without_password(url: str) -> str:
    """`url` fit for a message or a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class PostgresLedger(Ledger):
    """A ledger in the `adstream_billing` schema; the version is its `meta` row
    `schema_version`."""

    DAY = "to_char(to_timestamp(\"timestamp\" / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def __init__(self, connection: psycopg.Connection[TupleRow], where: str) -> None:
        self._db = connection
        self.where = where

    @classmethod
    def connect(cls, url: str, *, read_only: bool = False) -> PostgresLedger:
        where = without_password(url)
        try:
            # Transactions are explicit (BEGIN ... COMMIT in record_batch).
            connection = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise LedgerError(f"cannot open the ledger {where}: {exc}") from exc
        return cls(connection, where).prepared(read_only)

    def _prepare(self, read_only: bool) -> None:
        db = self._db
        if read_only:
            db.execute("SET default_transaction_read_only = on")
        elif not self._exists():
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_LOCK,))
                if not self._exists():
                    db.execute(_TABLES)
        if not self._exists():
            raise LedgerError(f"no ledger at {self.where}")
        db.execute(f"SET search_path TO {SCHEMA}")
        self._check_version()

    def _exists(self) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
        ).fetchone()
        return row is not None

    def _check_version(self) -> None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except psycopg.errors.UndefinedTable as exc:
            raise LedgerError(
                f"the schema {SCHEMA} of {self.where} is not an adstream billing ledger"
            ) from exc
        version = None if row is None else str(row[0])
        if version != str(SCHEMA_VERSION):
            raise LedgerError(
                f"the ledger {self.where} has schema version {version}; this adstream reads "
                f"version {SCHEMA_VERSION} only"
            )

    def execute(self, statement: str, parameters: Sequence[object] = ()) -> Rows:
        # Statements are this package's constants (no user text): `?` becomes psycopg's `%s`.
        query = statement.replace("?", "%s")
        return self._db.execute(query, parameters)

    def execute_many(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        query = statement.replace("?", "%s")
        with self._db.cursor() as cursor:
            cursor.executemany(query, rows)

    def insert_each(self, statement: str, rows: Sequence[Sequence[object]]) -> list[bool]:
        # One round trip for the batch (psycopg pipelines executemany), not one per charge.
        query = statement.replace("?", "%s") + " RETURNING 1"
        inserted = []
        with self._db.cursor() as cursor:
            cursor.executemany(query, rows, returning=True)
            for _ in rows:
                inserted.append(cursor.fetchone() is not None)
                cursor.nextset()
        return inserted

    def begin_write(self) -> None:
        self._db.execute("BEGIN")
        self._db.execute("LOCK TABLE offsets IN EXCLUSIVE MODE")

    def rollback(self) -> None:
        # Nothing to end when the connection is gone (the server ends the transaction).
        if self._db.info.transaction_status in (
            pq.TransactionStatus.INTRANS,
            pq.TransactionStatus.INERROR,
        ):
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()

    def database_error(self, error: BaseException) -> bool:
        return isinstance(error, psycopg.Error)
