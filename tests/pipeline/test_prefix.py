"""Two deployments on one cluster that differ only in ADSTREAM_TOPIC_PREFIX: the prefix starts
every name either uses there (topics, changelogs, Faust's assignor topic, consumer group,
transactional ids), so neither sees, joins or fences the other."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from infra.provision import Services
from streams.worker.tables import TABLES
from tests.pipeline.harness import BASE_MS, DAY_MS, Deployment, campaign, request

# aiokafka logs each transactional id as it finds the id's coordinator.
TRANSACTIONAL_ID = re.compile(r"coordinator \d+ for transactional id ([^\s\"]+)")


async def cluster_names(bootstrap: str, app_id: str) -> tuple[set[str], set[str]]:
    """The topics and consumer groups whose names contain `app_id`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = {name for name in await admin.list_topics() if app_id in name}
        groups = {group[0] for group in await admin.list_consumer_groups() if app_id in group[0]}
    finally:
        await admin.close()
    return topics, groups


async def test_deployments_differing_only_in_prefix_run_side_by_side(
    services: Services, tmp_path: Path, ad_url: str
) -> None:
    app_id = f"shared-{uuid.uuid4().hex[:8]}"
    bootstrap, redis_url = services.kafka_bootstrap_servers, services.redis_url
    rules = campaign(ad_url, caps=[(1, 3600)])  # one campaign id in both deployments
    at = BASE_MS + 3 * DAY_MS
    async with Deployment(bootstrap, redis_url, tmp_path / "a", app_id=app_id) as first:
        await first.load(rules)
        await first.decided(await first.publish(request(rules.campaign_id, at, "u-1")))
        async with Deployment(bootstrap, redis_url, tmp_path / "b", app_id=app_id) as second:
            await second.load(rules)
            # The same user and campaign: each deployment has its own cap state.
            in_first = await first.publish(
                *(request(rules.campaign_id, at + i, f"u-{i}") for i in range(1, 6))
            )
            in_second = await second.publish(
                *(request(rules.campaign_id, at + i, f"u-{i}") for i in range(1, 6))
            )
            first_decided = await first.decided(in_first, timeout_s=60)
            second_decided = await second.decided(in_second, timeout_s=60)
            assert [d.topic for d in first_decided] == ["denied"] + ["served"] * 4
            assert [d.topic for d in second_decided] == ["served"] * 5
            assert all(worker.running() for worker in first.workers + second.workers)
            assert set(first.decisions) & set(second.decisions) == set()
            assert not first.duplicates and not second.duplicates

            topics, groups = await cluster_names(bootstrap, app_id)
            transactional_ids = {
                deployment.group_id: {
                    found
                    for worker in deployment.workers
                    for found in TRANSACTIONAL_ID.findall(worker.log_path.read_text())
                }
                for deployment in (first, second)
            }
    assert groups == {first.group_id, second.group_id}
    internal = [f"{table}-changelog" for table in TABLES]
    internal += ["__assignor-__leader"]
    assert topics == {f"{d.group_id}-{name}" for d in (first, second) for name in internal}
    assert first.group_id == f"{first.name}-{app_id}"
    for group_id, found in transactional_ids.items():
        assert found and all(name.startswith(f"{group_id}-") for name in found), found
