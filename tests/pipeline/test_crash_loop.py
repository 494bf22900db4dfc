"""No message can stop the worker for good.

A failure inside one message's processing ends in its dead letter at once (`unprocessable`);
a message that takes the whole process down is found by the crash journal after two crashes
in a row on the same offsets and set aside (`crash_loop`), and everything around it is
decided exactly once."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path

import pytest

from infra.provision import Services
from streams.worker.process import WorkerFailed
from tests.pipeline.harness import BASE_MS, DAY_MS, Deployment, campaign, request

FAULTY = ("-m", "tests.pipeline.faulty_worker")


@pytest.fixture
async def faulty(services: Services, tmp_path: Path) -> Deployment:
    return Deployment(
        services.kafka_bootstrap_servers,
        services.redis_url,
        tmp_path,
        partitions=1,
        worker_command=FAULTY,
    )


async def test_an_error_while_processing_a_message_dead_letters_it(
    faulty: Deployment, ad_url: str
) -> None:
    async with faulty as deployment:
        rules = campaign(ad_url)
        await deployment.load(rules)
        at = BASE_MS + 3 * DAY_MS
        bad = request(rules.campaign_id, at, "u-bad", params={"fault": "unencodable"})
        good = request(rules.campaign_id, at + 1, "u-good")
        await deployment.publish(bad, good)
        (decision,) = await deployment.decided([good.context.request_id])
        assert decision.topic == "served"
        (letter,) = await deployment.dead_lettered(1)
        assert letter.payload["error"].startswith("unprocessable: TypeError")
        assert deployment.workers[0].running()
        # Nothing of the failed message was kept: its user was never charged an impression.
        state = await deployment.state(rules.campaign_id)
        assert state.spend is not None and state.spend.lifetime == 2500  # one at CPM 2.50


async def test_a_message_that_kills_the_worker_is_set_aside_after_two_crashes(
    faulty: Deployment, ad_url: str
) -> None:
    async with faulty as deployment:
        rules = campaign(ad_url)
        await deployment.load(rules)
        at = BASE_MS + 4 * DAY_MS
        before = [request(rules.campaign_id, at + i, f"u-before-{i}") for i in range(5)]
        poison = request(rules.campaign_id, at + 10, "u-poison", params={"fault": "crash"})
        after = [request(rules.campaign_id, at + 20 + i, f"u-after-{i}") for i in range(5)]
        valid = [r.context.request_id for r in (*before, *after)]
        await deployment.publish(*before, poison, *after)

        starts = 1
        while not await deployment.until(
            lambda: all(r in deployment.decisions for r in valid) and bool(deployment.dead_letters),
            timeout_s=5.0,
        ):
            worker = deployment.workers[0]
            if worker.running():
                continue
            assert starts < 5, f"still crashing after {starts} starts:\n{worker.log_tail()}"
            deployment.workers.clear()
            starts += 1
            # It may die again before it reports ready: the next round restarts it.
            with contextlib.suppress(WorkerFailed):
                await deployment.add_worker(0)

        assert 3 <= starts <= 4
        (letter,) = deployment.dead_letters
        assert letter.payload["error"].startswith("crash_loop:")
        assert poison.context.request_id.encode() in base64.b64decode(letter.payload["value"])
        assert all(deployment.decisions[r].topic == "served" for r in valid)
        await asyncio.sleep(2.0)  # a late duplicate would show by now
        assert deployment.duplicates == []
        journal = json.loads(
            (deployment.root / "worker-0" / "crash-journal-decide.json").read_text()
        )
        assert journal == {"in_flight": [], "suspects": []}
