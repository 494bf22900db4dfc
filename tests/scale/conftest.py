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
    """Full-size scenarios run only when asked for by `-m full`, unstable ones by
    `-m unstable` (both: `-m "full and unstable"`)."""
    chosen = config.getoption("markexpr", "") or ""
    for marker, how in (("full", "-m full"), ("unstable", "-m unstable")):
        if marker in chosen:
            continue
        for item in items:
            found = item.get_closest_marker(marker)
            if found is not None:
                reason = found.kwargs.get("reason", "full size")
                item.add_marker(pytest.mark.skip(reason=f"{reason}: run with `{how}`"))


@pytest.fixture
def env(services: Services, vast_server: VastServer, tmp_path: Path) -> Iterator[Env]:
    yield Env(services.kafka_bootstrap_servers, services.redis_url, vast_server, tmp_path)
