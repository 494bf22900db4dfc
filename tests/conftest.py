"""Session-wide services for the whole suite: one Kafka broker and one Redis server, and a
throwaway PostgreSQL server for the tests that ask for one (`postgres`).

Addresses from KAFKA_BOOTSTRAP_SERVERS / REDIS_URL win; else testcontainers when a Docker
engine answers; else the local launcher (see infra/provision.py). Tests never share topics:
each asks `unique_name` for its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings

from infra.postgres_server import PostgresServer
from infra.provision import Services, provide_services
from tests.upstream import VastServer, serve

# Hypothesis fails an example that takes over 200 ms of wall clock: on a busy two-core CI
# machine that is noise, not a finding. Speed is what the benchmarks measure.
settings.register_profile("adstream", deadline=None)
settings.load_profile("adstream")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with provide_services(tmp_path_factory.mktemp("infra")) as provided:
        yield provided


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    return services.kafka_bootstrap_servers


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    return services.redis_url


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this session's own (Debian's packages, installed if missing)."""
    server = PostgresServer(log_dir=tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A topic/group name no other test (or earlier run against the same broker) uses."""
    test = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-")[:60]
    return f"{test}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
async def vast_server() -> AsyncIterator[VastServer]:
    """A real HTTP server on 127.0.0.1 playing VAST upstreams; each test adds its own routes."""
    server = VastServer()
    runner = await serve(server)
    yield server
    await runner.cleanup()
