"""Fixtures of the billing tests: a fresh `ad-served` topic per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.billing.support import Topic


@pytest.fixture
async def topic(kafka_bootstrap: str, unique_name: str) -> AsyncIterator[Topic]:
    created = Topic(kafka_bootstrap, f"{unique_name}-")
    await created.create()
    yield created
    await created.close()
