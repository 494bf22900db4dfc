"""The tables' changelog topics exist before Faust starts, named as Faust names them.

Faust creates missing changelogs itself while starting, but its partition assignor could run
before they showed in metadata and leave them out of the assignment (the table routes then
answered 503 until the next rebalance); the worker creates them first."""

from __future__ import annotations

import faust
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.admin import ensure_changelogs
from streams.worker.tables import Tables, changelog_partitions


async def test_changelogs_created_as_faust_would(kafka_bootstrap: str, unique_name: str) -> None:
    app = faust.App(unique_name, broker=f"kafka://{kafka_bootstrap}", store="memory://")
    tables = Tables(app, 3)
    declared = {
        typed.table.changelog_topic.get_topic_name(): typed.table.partitions
        for typed in (tables.seen, tables.frequency, tables.leases, tables.banks)
    }
    wanted = changelog_partitions(unique_name, 3)
    assert declared == wanted

    await ensure_changelogs(kafka_bootstrap, wanted)
    await ensure_changelogs(kafka_bootstrap, wanted)  # a second worker: nothing to do

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(wanted))
        assert {t["topic"]: len(t["partitions"]) for t in described} == wanted
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
        )
        policies = {
            resource[3]: {entry[0]: entry[1] for entry in resource[4]}["cleanup.policy"]
            for response in configs
            for resource in response.resources
        }
        assert policies == dict.fromkeys(wanted, "compact")
    finally:
        await admin.close()
