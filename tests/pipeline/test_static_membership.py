"""Static group membership (`ADSTREAM_INSTANCE_ID`, KIP-345): a worker SIGKILLed and restarted
at once (on another web port) takes its partitions back in the group's generation, without
waiting for the broker to give up on the dead member (the session timeout, 10 s) and
rebalancing.

Prints the seconds from the kill to the restarted worker's first decision, with and without,
and how long the restarted worker's join took.
"""

from __future__ import annotations

import datetime
import json
import signal
import time
from pathlib import Path

import msgspec

from infra.provision import Services
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

SESSION_TIMEOUT_S = 10.0
"""The worker's `broker_session_timeout` (streams/worker/app.py)."""


class Join(msgspec.Struct):
    generation: int
    seconds: float
    """From asking to (re-)join the group to having an assignment."""


def joins(log_path: Path) -> list[Join]:
    """Each group join a worker's log shows (its log is appended at every start)."""
    found = []
    asked = None
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        message = str(entry.get("message", ""))
        at = datetime.datetime.fromisoformat(entry["ts"]).timestamp()
        if message.startswith("(Re-)joining group"):
            asked = at
        elif message.startswith("Successfully synced group") and asked is not None:
            found.append(Join(int(message.rsplit(" ", 1)[1]), round(at - asked, 3)))
    return found


async def kill_and_restart(deployment: Deployment, ad_url: str) -> tuple[float, list[Join]]:
    """Seconds from a SIGKILL to the first decision of a request published right after it,
    with the worker restarted at once; and the group joins of worker 0."""
    rules = campaign(ad_url)
    await deployment.load(rules)
    before = request(rules.campaign_id, BASE_MS, "static-user")
    await deployment.decided(await deployment.publish(before))
    assert deployment.workers[0].stop(signal.SIGKILL) == -signal.SIGKILL
    killed = time.monotonic()
    deployment.workers.clear()
    after = request(rules.campaign_id, BASE_MS + 1, "static-user-2")
    await deployment.publish(after)
    await deployment.add_worker(index=0)
    (decision,) = await deployment.decided([after.context.request_id], timeout_s=60)
    return decision.received_at - killed, joins(deployment.root / "worker-0.log")


async def test_a_restarted_static_member_does_not_wait_for_the_session(
    services: Services, tmp_path: Path, ad_url: str
) -> None:
    timings = {}
    for static in (True, False):
        async with Deployment(
            services.kafka_bootstrap_servers,
            services.redis_url,
            tmp_path / str(static),
            extra_env={"ADSTREAM_INSTANCE_ID": "worker-0"} if static else {},
        ) as deployment:
            seconds, (*_, before, after) = await kill_and_restart(deployment, ad_url)
        timings[static] = (seconds, after.seconds)
        if static:
            # Back in the generation it left, at once: the group never rebalanced.
            assert after.generation == before.generation
            assert after.seconds < SESSION_TIMEOUT_S / 2
        else:
            assert after.generation > before.generation
    for static, (seconds, joined) in timings.items():
        print(
            f"{'with' if static else 'without'} static membership: SIGKILL -> first decision "
            f"of the restarted worker {seconds:.1f} s, its group join {joined:.2f} s"
        )
