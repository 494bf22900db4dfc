"""The worker SIGKILLed at chosen points of its commit (`tests.pipeline.commit_crash_worker`),
each point several times over, and restarted at once on the same data directory (RocksDB
store) every time. After each restart, once the worker has committed every request published:
exactly one decision per request (none lost, none twice), no cap or budget exceeded, the
tables' changelogs replaying to exactly what the decisions imply, and the worker's own tables
equal to that replay."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
from pathlib import Path

from infra.provision import Services
from models.events import AdRequest
from streams.invariants import budget_violations, cap_violations
from tests.pipeline.changelog_replay import replay, replay_problems, worker_problems
from tests.pipeline.commit_crash_worker import MARK, POINTS
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

ROUNDS = 2
"""Kills at each point."""
PER_KILL = 40
"""Requests published around each kill."""
USERS = 12


async def publish_steadily(deployment: Deployment, requests: list[AdRequest]) -> None:
    for start in range(0, len(requests), 10):
        await deployment.publish(*requests[start : start + 10])
        await asyncio.sleep(0.05)


async def test_sigkill_at_each_commit_boundary_then_restart(
    services: Services, tmp_path: Path, ad_url: str
) -> None:
    capped = campaign(ad_url, caps=[(2, 3600)])
    budgeted = campaign(ad_url, lifetime="0.20")  # 80 of the ~120 requests for it
    campaigns = {c.campaign_id: c for c in (capped, budgeted)}
    kills = [point for _ in range(ROUNDS) for point in POINTS]
    deployment = Deployment(
        services.kafka_bootstrap_servers,
        services.redis_url,
        tmp_path,
        store="rocksdb",
        worker_command=("-m", "tests.pipeline.commit_crash_worker"),
        # Static membership: the restarted worker is back at once, not after the session.
        extra_env={"ADSTREAM_INSTANCE_ID": "worker-0", "ADSTREAM_TEST_CRASH_AT": kills[0]},
    )
    rng = random.Random(16)
    published: list[str] = []
    timings = []
    async with deployment:
        await deployment.load(*campaigns.values())
        for number, point in enumerate(kills, start=1):
            worker = deployment.workers[-1]
            at = BASE_MS + len(published) * 10_000
            around = [
                request(rng.choice(list(campaigns)), at + i * 10_000, f"u{rng.randrange(USERS)}")
                for i in range(PER_KILL)
            ]
            # A new user of the capped campaign is served: its resolution arms the kill.
            around.insert(
                PER_KILL // 2,
                request(capped.campaign_id, at, f"marked-{number}", params={MARK: "1"}),
            )
            published += [r.context.request_id for r in around]
            await publish_steadily(deployment, around)
            assert worker.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(worker.proc.wait, 60)
            assert worker.stop() == -signal.SIGKILL, worker.log_tail()
            deaths = worker.log_path.read_text().count("dying at ")
            assert (deaths, f"dying at {point}" in worker.log_tail(5)) == (number, True)

            started = time.monotonic()
            deployment.extra_env["ADSTREAM_TEST_CRASH_AT"] = kills[number % len(kills)]
            await deployment.add_worker(index=0)
            assert await deployment.settled()
            timings.append(time.monotonic() - started)
            decisions = await deployment.decided(published, timeout_s=60)
            assert deployment.duplicates == [], point
            served = [d for d in decisions if d.topic == "served"]
            assert cap_violations(served, campaigns) == []
            assert budget_violations(served, campaigns) == []
            replayed = await replay(deployment)
            assert replay_problems(replayed, decisions) == [], point
            assert await worker_problems(deployment, replayed, [capped.campaign_id]) == [], point

    reasons = {d.reason for d in deployment.decisions.values()}
    assert {None, "frequency_cap", "budget_exhausted"} <= reasons  # the limits were reached
    print(f"{len(kills)} kills; restart to settled: max {max(timings):.1f} s")
