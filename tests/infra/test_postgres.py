"""The PostgreSQL server is real: transactions commit or roll back, each database apart; a
taken port is refused before anything starts."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from infra.errors import PortInUse
from infra.postgres_server import PostgresServer


def test_transactions_commit_or_roll_back(postgres: PostgresServer) -> None:
    url = postgres.create_database(f"infra_{uuid.uuid4().hex}")
    with psycopg.connect(url) as db:
        db.execute("CREATE TABLE t (x BIGINT PRIMARY KEY)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
        db.execute("INSERT INTO t VALUES (2)")
        db.rollback()
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    # Another database: no such table.
    with psycopg.connect(postgres.url()) as other, pytest.raises(psycopg.errors.UndefinedTable):
        other.execute("SELECT x FROM t")


def test_a_taken_port_is_refused(postgres: PostgresServer, tmp_path: Path) -> None:
    second = PostgresServer(log_dir=tmp_path, port=postgres.port)
    with pytest.raises(PortInUse, match=f"port {postgres.port}"):
        second.start()
