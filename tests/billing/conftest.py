"""Fixtures of the billing tests: a fresh `ad-served` topic per test, and a fresh ledger in
each kind of database (a file for SQLite, a new database on the session's PostgreSQL server)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.postgres_server import PostgresServer
from tests.billing.support import Topic


@pytest.fixture
async def topic(kafka_bootstrap: str, unique_name: str) -> AsyncIterator[Topic]:
    created = Topic(kafka_bootstrap, f"{unique_name}-")
    await created.create()
    yield created
    await created.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's ledger goes: what `--ledger` is given."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"ledger_{uuid.uuid4().hex}")
