"""Test driver: the real worker, with a resolver that fails on purpose where a request's
params ask for it, for the failures no input should be able to cause.

    python -m tests.pipeline.faulty_worker      (settings from the environment)

- `fault=crash`: the process is SIGKILLed while resolving it, as a native crash or the
  kernel's OOM killer would end it: what the crash journal is for.
- `fault=unencodable`: the upstream's answer cannot be encoded into an `AdServed`, an error
  inside the decide stage after resolution: what the per-message boundary is for.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import msgspec
from typing_extensions import override

from models.events import AdRequest
from streams.settings import Settings
from streams.state.campaigns import CampaignRules
from streams.vast.result import VastResult
from streams.worker.runner import run, upstreams_for
from streams.worker.upstreams import CampaignUpstreams


class FaultyUpstreams(CampaignUpstreams):
    @override
    async def resolve(self, rules: CampaignRules, request: AdRequest) -> VastResult:
        fault = request.params.get("fault")
        if fault == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        result = await super().resolve(rules, request)
        if fault == "unencodable" and result.ads:
            unencodable: Any = object()
            return msgspec.structs.replace(result, chain=(unencodable,))
        return result


if __name__ == "__main__":
    settings = Settings.from_env()
    run(settings, upstreams_for(settings, FaultyUpstreams))
