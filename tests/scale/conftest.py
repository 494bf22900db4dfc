"""Scale and fault scenarios: the small size by default; `pytest tests/scale -m full` runs the
full size (1,000,000 state keys, tens of thousands of requests) instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.provision import Services
from tests.scale.scenarios import Env
from tests.upstream import VastServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Full-size scenarios run only when asked for by `-m full`."""
    if "full" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="full size: run with `pytest tests/scale -m full`")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def env(services: Services, vast_server: VastServer, tmp_path: Path) -> Iterator[Env]:
    yield Env(services.kafka_bootstrap_servers, services.redis_url, vast_server, tmp_path)
