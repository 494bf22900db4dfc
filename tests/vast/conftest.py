"""Fixtures of the resolver's tests; the HTTP upstream itself is in `tests.upstream`."""

from __future__ import annotations

import pytest

from models.context import SessionContext
from tests.upstream import VastServer


@pytest.fixture
def server(vast_server: VastServer) -> VastServer:
    return vast_server


@pytest.fixture
def context() -> SessionContext:
    # A fixed event time, so expanded [TIMESTAMP]s can be asserted exactly.
    return SessionContext.create({"user_id": "u-1"}, timestamp=1_700_000_000_123)
