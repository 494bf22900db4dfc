"""Each scale/fault scenario of `tests.scale.scenarios` against the real services, at the
small size; the same scenarios at the full size carry the `full` marker (`-m full`)."""

from __future__ import annotations

import pytest

from tests.scale.scenarios import FULL, SCENARIOS, SMALL, Env, Size, check, run

SIZES = [pytest.param(SMALL, id="small"), pytest.param(FULL, id="full", marks=pytest.mark.full)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario(env: Env, name: str, size: Size) -> None:
    result = await run(name, env, size)
    print(result)
    check(result)
