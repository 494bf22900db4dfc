"""Test driver: the real worker, SIGKILLed at a chosen point of its commit protocol
(`streams.worker.commit_protocol`), the way a power cut or the OOM killer would end it there.

    ADSTREAM_TEST_CRASH_AT=<point> python -m tests.pipeline.commit_crash_worker

Deciding a request whose params carry `crash_commit` arms the kill; the worker then dies at
`<point>` of the next commit that ends a transaction:

- `before_end`: a transaction holds outputs and table writes, its offsets not committed yet;
- `after_end`: one partition's transaction has committed, the commit's others may not have;
- `after_commit`: every transaction of the commit has committed; what follows a commit has
  not run.

Each marked request arms it once per data directory (a file there remembers it), so the
worker restarted after the kill goes on when it decides that request again. Just before
dying the worker prints `dying at <point>`, so the test knows where it died.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import ClassVar

from faust.types import TP
from typing_extensions import override

from models.events import AdRequest
from streams.settings import Settings
from streams.state.campaigns import CampaignRules
from streams.vast.result import VastResult
from streams.worker.commit_protocol import Committer
from streams.worker.runner import run, upstreams_for
from streams.worker.upstreams import CampaignUpstreams

POINTS = ("before_end", "after_end", "after_commit")
MARK = "crash_commit"


class Crash:
    """Where this process dies, and whether a marked request has armed it yet."""

    def __init__(self, point: str, marks: Path) -> None:
        if point not in POINTS:
            raise ValueError(f"ADSTREAM_TEST_CRASH_AT={point!r}: one of {', '.join(POINTS)}")
        self.point = point
        self.marks = marks
        self.armed = False

    def arm(self, request_id: str) -> None:
        mark = self.marks / f"crashed-at-{request_id}"
        if not mark.exists():
            mark.touch()
            self.armed = True

    def at(self, point: str) -> None:
        if self.armed and point == self.point:
            print(f"dying at {point}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class ArmingUpstreams(CampaignUpstreams):
    crash: ClassVar[Crash]

    @override
    async def resolve(self, rules: CampaignRules, request: AdRequest) -> VastResult:
        if MARK in request.params:
            self.crash.arm(request.context.request_id)
        return await super().resolve(rules, request)


class CrashingCommitter(Committer):
    crash: ClassVar[Crash]

    @override
    async def _end_transaction(
        self, transactional_id: str, offsets: dict[TP, int], start_new_transaction: bool
    ) -> None:
        self.crash.at("before_end")
        await super()._end_transaction(transactional_id, offsets, start_new_transaction)
        self.crash.at("after_end")

    @override
    async def _commit(self, start_new_transaction: bool) -> bool:
        committed = await super()._commit(start_new_transaction)
        if committed:
            self.crash.at("after_commit")
        return committed


if __name__ == "__main__":
    settings = Settings.from_env()
    crash = Crash(os.environ["ADSTREAM_TEST_CRASH_AT"], Path(settings.data_dir))
    ArmingUpstreams.crash = CrashingCommitter.crash = crash
    run(settings, upstreams_for(settings, ArmingUpstreams), CrashingCommitter)
