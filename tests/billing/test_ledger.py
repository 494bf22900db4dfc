"""The ledger on its own, SQLite and PostgreSQL alike: all-or-nothing batches, charges
idempotent by request_id, a second writer waits and is refused, refusals with clear messages,
totals per campaign, currency and UTC day."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from infra.postgres_server import PostgresServer
from infra.process import free_port
from streams.billing.ledger import (
    SCHEMA_VERSION,
    Charge,
    Counts,
    Ledger,
    LedgerConflict,
    LedgerError,
    Rejected,
    Total,
)
from tests.billing.support import BASE_MS, DAY_MS


def charge(
    request_id: str,
    offset: int,
    *,
    partition: int = 0,
    campaign_id: str = "camp-1",
    timestamp: int = BASE_MS,
    cost_micros: int = 2500,
    currency: str = "USD",
) -> Charge:
    return Charge(request_id, campaign_id, timestamp, cost_micros, currency, partition, offset)


def utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


@pytest.fixture
def ledger(ledger_target: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_target) as opened:
        yield opened


def test_a_batch_lands_whole_or_not_at_all(ledger: Ledger) -> None:
    def crash() -> None:
        raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        ledger.record_batch(
            [charge("req-1", 0)],
            {0: 2},
            rejected=[Rejected(0, 1, "bad", None, b"x")],
            before_commit=crash,
        )
    assert list(ledger.charges()) == []
    assert ledger.offsets() == {}
    assert ledger.counts() == Counts(charges=0, duplicates=0, rejected=0)

    recorded = ledger.record_batch(
        [charge("req-1", 0)], {0: 2}, rejected=[Rejected(0, 1, "bad", None, b"x")]
    )
    assert (recorded.charged, recorded.rejected) == (1, 1)
    assert ledger.offsets() == {0: 2}
    assert list(ledger.rejected()) == [Rejected(0, 1, "bad", None, b"x")]


def test_a_request_id_is_charged_once(ledger: Ledger) -> None:
    first = ledger.record_batch([charge("req-1", 0), charge("req-1", 1)], {0: 2})
    second = ledger.record_batch([charge("req-1", 0, partition=1, cost_micros=9)], {1: 1})
    assert first.charged == 1
    assert first.duplicates == (charge("req-1", 1),)
    assert second.charged == 0
    assert list(ledger.charges()) == [charge("req-1", 0)]
    assert [(d.partition, d.offset) for d in ledger.duplicates()] == [(0, 1), (1, 0)]
    assert ledger.counts() == Counts(charges=1, duplicates=2, rejected=0)


def test_records_already_read_past_are_refused(ledger: Ledger) -> None:
    ledger.record_batch([charge("req-1", 0)], {0: 5})
    with pytest.raises(LedgerConflict, match="another billing process"):
        ledger.record_batch([charge("req-2", 3)], {0: 6})
    with pytest.raises(LedgerConflict, match="move back"):
        ledger.record_batch([], {0: 4})
    assert ledger.offsets() == {0: 5}
    assert [c.request_id for c in ledger.charges()] == ["req-1"]


def test_a_second_writer_waits_for_the_first_and_sees_its_offsets(
    ledger: Ledger, ledger_target: str
) -> None:
    outcome: list[BaseException | None] = []

    def second_writer() -> None:
        with Ledger.open(ledger_target) as other:
            try:
                other.record_batch([charge("req-2", 3)], {0: 4})
                outcome.append(None)
            except LedgerError as exc:
                outcome.append(exc)

    def while_uncommitted() -> None:
        writer.start()
        writer.join(1.0)
        assert writer.is_alive(), "the second writer did not wait for the first's commit"

    writer = threading.Thread(target=second_writer)
    ledger.record_batch([charge("req-1", 0)], {0: 5}, before_commit=while_uncommitted)
    writer.join(30)
    assert not writer.is_alive()
    assert isinstance(outcome[0], LedgerConflict), outcome
    assert [c.request_id for c in ledger.charges()] == ["req-1"]
    assert ledger.offsets() == {0: 5}


def test_charges_come_in_topic_order(ledger: Ledger) -> None:
    ledger.record_batch([charge("b", 0, partition=1), charge("a", 7)], {0: 8, 1: 1})
    ledger.record_batch([charge("c", 8), charge("d", 1, partition=1)], {0: 9, 1: 2})
    assert [c.request_id for c in ledger.charges()] == ["a", "c", "b", "d"]


def test_totals_per_campaign_currency_and_utc_day(ledger: Ledger) -> None:
    last_ms_of_day = BASE_MS + DAY_MS - 1
    ledger.record_batch(
        [
            charge("1", 0, timestamp=last_ms_of_day),
            charge("2", 1, timestamp=last_ms_of_day + 1),
            charge("3", 2, timestamp=last_ms_of_day + 1),
            charge("4", 3, currency="EUR", cost_micros=1),
            charge("5", 4, campaign_id="camp-2", cost_micros=10**15),
        ],
        {0: 5},
    )
    day, next_day = utc_day(last_ms_of_day), utc_day(last_ms_of_day + 1)
    assert ledger.totals() == [
        Total("camp-1", "EUR", day, 1, 1),
        Total("camp-1", "USD", day, 1, 2500),
        Total("camp-1", "USD", next_day, 2, 5000),
        Total("camp-2", "USD", day, 1, 10**15),
    ]


def test_the_ledger_is_tied_to_one_topic(ledger_target: str) -> None:
    with Ledger.open(ledger_target) as ledger:
        ledger.bind("a-ad-served")
        ledger.bind("a-ad-served")
        with pytest.raises(LedgerError, match="bills topic 'a-ad-served', not 'b-ad-served'"):
            ledger.bind("b-ad-served")
    with Ledger.open(ledger_target, read_only=True) as ledger:
        assert ledger.topic == "a-ad-served"


def test_read_only_sees_committed_charges_and_cannot_write(ledger_target: str) -> None:
    with Ledger.open(ledger_target) as writer, Ledger.open(ledger_target, read_only=True) as reader:
        writer.record_batch([charge("req-1", 0)], {0: 1})
        assert list(reader.charges()) == [charge("req-1", 0)]
        with pytest.raises(LedgerError, match=r"cannot write to the ledger .* read-?only"):
            reader.record_batch([charge("req-2", 1)], {0: 2})
        assert writer.offsets() == {0: 1}


def test_files_that_are_not_this_ledger_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger.open(tmp_path / "missing.db", read_only=True)
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger.open(tmp_path / "no-such-dir" / "ledger.db")

    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 100)
    with pytest.raises(LedgerError, match="file is not a database"):
        Ledger.open(text)

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE things (x)")
    with pytest.raises(LedgerError, match="not an adstream billing ledger"):
        Ledger.open(other)
    with sqlite3.connect(other) as db:  # left as it was
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)

    newer = tmp_path / "newer.db"
    Ledger.open(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Ledger.open(newer)
    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Ledger.open(newer, read_only=True)


def test_postgresql_databases_that_are_not_this_ledger_are_refused(
    postgres: PostgresServer,
) -> None:
    empty = postgres.create_database("not_a_ledger")
    with pytest.raises(LedgerError, match="no ledger at postgresql://adstream@"):
        Ledger.open(empty, read_only=True)
    with psycopg.connect(empty, autocommit=True) as db:
        db.execute("CREATE SCHEMA adstream_billing")
    with pytest.raises(LedgerError, match=r"schema adstream_billing .* not an adstream billing"):
        Ledger.open(empty)

    newer = postgres.create_database("newer_ledger")
    Ledger.open(newer).close()
    with psycopg.connect(newer, autocommit=True) as db:
        db.execute(
            "UPDATE adstream_billing.meta SET value = %s WHERE key = 'schema_version'",
            (str(SCHEMA_VERSION + 1),),
        )
    for read_only in (False, True):
        with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}"):
            Ledger.open(newer, read_only=read_only)

    unreachable = f"postgresql://billing:s3cret@127.0.0.1:{free_port()}/ledger"
    with pytest.raises(
        LedgerError, match=r"cannot open the ledger postgresql://billing:\*\*\*@"
    ) as refused:
        Ledger.open(unreachable)
    assert "s3cret" not in str(refused.value)
