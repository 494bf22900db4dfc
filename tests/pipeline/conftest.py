"""One worker (a real process) per test module, on its own topics, with a real VAST upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from infra.provision import Services
from tests.pipeline.harness import Deployment
from tests.upstream import VastServer, inline, vast


@pytest.fixture(scope="module")
async def deployment(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    async with Deployment(
        services.kafka_bootstrap_servers, services.redis_url, tmp_path_factory.mktemp("deploy")
    ) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def ad_url(vast_server: VastServer) -> str:
    """An upstream that always fills."""
    return vast_server.add(vast(inline()), name="ad.xml")


@pytest.fixture(scope="module")
def no_ad_url(vast_server: VastServer) -> str:
    return vast_server.add(vast(), name="empty.xml")


@pytest.fixture(scope="module")
def broken_url(vast_server: VastServer) -> str:
    return vast_server.add("upstream down", status=503, name="broken.xml")
