"""Each scale/fault scenario of `tests.scale.scenarios` against the real services, at the
small size; the same scenarios at the full size carry the `full` marker (`-m full`).

Two scenarios still fail now and then on open worker problems (docs/reliability.md, "Open
problems"); they carry the `unstable` marker and run only with `-m unstable` until fixed.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.scale.scenarios import FULL, SCENARIOS, SMALL, Env, Size, check, run

UNSTABLE = {
    "scale_out": "a restore after a rebalance may skip a changelog partition (~1 run in 4)",
    "broker_restart": "a worker restarted after a broker outage may stop deciding (~3 in 7)",
}


def cases() -> list[Any]:
    params = []
    for name in SCENARIOS:
        unstable = [pytest.mark.unstable(reason=UNSTABLE[name])] if name in UNSTABLE else []
        params.append(pytest.param(name, SMALL, id=f"{name}-small", marks=unstable))
        params.append(
            pytest.param(name, FULL, id=f"{name}-full", marks=[pytest.mark.full, *unstable])
        )
    return params


@pytest.mark.parametrize(("name", "size"), cases())
async def test_scenario(env: Env, name: str, size: Size) -> None:
    result = await run(name, env, size)
    print(result)
    check(result)
