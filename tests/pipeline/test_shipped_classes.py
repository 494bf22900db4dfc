"""faust-streaming is changed only through its own extension points: a worker that has started,
restored its tables, decided and committed leaves every class of faust-streaming, aiokafka and
mode as shipped (`streams.worker.kafka_transport`, `streams.worker.recovery`)."""

from __future__ import annotations

import json
from pathlib import Path

from infra.provision import Services
from tests.pipeline.harness import BASE_MS, DAY_MS, Deployment, campaign, request


async def test_a_worker_leaves_faust_and_aiokafka_classes_as_shipped(
    services: Services, tmp_path: Path, ad_url: str
) -> None:
    report = tmp_path / "shipped-classes.json"
    async with Deployment(
        services.kafka_bootstrap_servers,
        services.redis_url,
        tmp_path,
        worker_command=("-m", "tests.pipeline.shipped_classes_worker"),
        extra_env={"SHIPPED_CLASSES_REPORT": str(report)},
    ) as deployment:
        rules = campaign(ad_url)
        await deployment.load(rules)
        sent = request(rules.campaign_id, BASE_MS + 5 * DAY_MS, "u-shipped")
        (decision,) = await deployment.decided(await deployment.publish(sent))
        assert decision.topic == "served"
        assert deployment.workers[0].stop() == 0  # a clean stop: the last commit ran too

    found = json.loads(report.read_text())
    assert found["classes"] > 500  # the drivers, consumers, producers, tables, recovery...
    assert found["changed"] == []
