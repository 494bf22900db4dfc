"""A RocksDB worker's files hold exactly the committed changelog up to the offsets they hold,
whenever it dies: a SIGKILLed worker restarts on them and restores only the changelog's tail,
and the writes of a transaction that never committed never reach them."""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.provision import Services
from streams.worker.tables import TABLES
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request
from tests.rocksdb_files import on_disk

RESTORED = re.compile(r"restore streamed (\d+) changelog records")

Record = tuple[int, int, bytes, bytes | None]
"""A changelog record: (offset, timestamp in ms, key, value or None)."""


@pytest.fixture
async def rocksdb_deployment(services: Services, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with Deployment(
        services.kafka_bootstrap_servers, services.redis_url, tmp_path, store="rocksdb"
    ) as deployed:
        yield deployed


def tabledir(deployment: Deployment, index: int = 0) -> Path:
    return deployment.root / f"worker-{index}" / "v1" / "tables"


async def changelog(
    deployment: Deployment,
    table: str,
    partition: int,
    *,
    committed: bool = True,
    through: int | None = None,
) -> list[Record]:
    """Every record of a table's changelog partition up to its end, as a read_committed
    reader (a restore) or a read_uncommitted one sees them; at least through offset
    `through` (a transaction's markers reach the log just after its commit returns)."""
    tp = TopicPartition(f"{deployment.group_id}-{table}-changelog", partition)
    reader = AIOKafkaConsumer(
        bootstrap_servers=deployment.bootstrap,
        isolation_level="read_committed" if committed else "read_uncommitted",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        reader.assign([tp])
        end = max((await reader.end_offsets([tp]))[tp], -1 if through is None else through + 1)
        reader.seek(tp, (await reader.beginning_offsets([tp]))[tp])
        records: list[Record] = []
        deadline = time.monotonic() + 30
        while await reader.position(tp) < end:
            assert time.monotonic() < deadline, f"could not read {tp} to {end}"
            fetched = await reader.getmany(tp, timeout_ms=500)
            records += [(r.offset, r.timestamp, r.key, r.value) for r in fetched.get(tp, [])]
        return records
    finally:
        await reader.stop()


def replay(records: list[Record], up_to: int | None) -> dict[bytes, bytes]:
    """The table partition that applying the records up to an offset builds."""
    state: dict[bytes, bytes] = {}
    for offset, _, key, value in records:
        if up_to is None or offset > up_to:
            break
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


async def written_after(
    deployment: Deployment,
    on_disk: Mapping[tuple[str, int], tuple[int | None, list[Record]]],
    before_ms: float,
) -> int:
    """The committed changelog records past the offsets the files held, written by
    `before_ms`: exactly what a restart must restore."""
    count = 0
    for (table, partition), (offset, _) in on_disk.items():
        records = await changelog(deployment, table, partition)
        count += sum(
            1
            for record_offset, timestamp, _, _ in records
            if (offset is None or record_offset > offset) and timestamp <= before_ms
        )
    return count


async def assert_disk_is_the_committed_changelog(
    deployment: Deployment, *, whole: bool, index: int = 0
) -> dict[tuple[str, int], tuple[int | None, list[Record]]]:
    """Each table partition's files equal a replay of its committed changelog up to the offset
    they hold (`whole`: the offset of the last record, as after a clean stop). Returns each
    one's (offset held, committed records)."""
    found = {}
    for table in TABLES:
        for partition in range(deployment.partitions):
            offset, stored = on_disk(tabledir(deployment, index), table, partition)
            records = await changelog(deployment, table, partition, through=offset)
            assert stored == replay(records, offset), f"{table}-{partition} at {offset}"
            if whole:
                assert offset == (records[-1][0] if records else None), f"{table}-{partition}"
            found[(table, partition)] = (offset, records)
    return found


def last_restore(deployment: Deployment) -> int:
    """How many changelog records the worker's last restore read."""
    counts = RESTORED.findall(deployment.workers[-1].log_path.read_text())
    assert counts, "no restore logged"
    return int(counts[-1])


async def test_a_sigkilled_worker_restarts_on_its_files_and_restores_only_the_tail(
    rocksdb_deployment: Deployment, ad_url: str
) -> None:
    deployment = rocksdb_deployment
    campaigns = [
        campaign(ad_url, caps=[(2, 3600)], lifetime="3.00"),
        campaign(ad_url, caps=[(1, 600)], daily="1.50", cpm="3.333"),
    ]
    await deployment.load(*campaigns)
    rng = random.Random(16)
    ids = [c.campaign_id for c in campaigns]
    requests = [
        request(rng.choice(ids), BASE_MS + i * 20_000, f"user-{rng.randrange(80)}")
        for i in range(1200)
    ]
    for start in range(0, 600, 100):
        await deployment.publish(*requests[start : start + 100])
    await deployment.until(lambda: len(deployment.decisions) >= 300, 60)
    assert deployment.workers[0].stop(signal.SIGKILL) == -signal.SIGKILL
    killed_ms = time.time() * 1000

    at_kill = await assert_disk_is_the_committed_changelog(deployment, whole=False)
    assert any(offset is not None for offset, _ in at_kill.values()), "nothing on disk"

    await deployment.add_worker(index=0)
    # The restore read exactly the committed records the files lacked: those sent before the
    # kill (a transaction the kill interrupted may have committed since).
    tail = await written_after(deployment, at_kill, killed_ms)
    total = sum(len(records) for _, records in at_kill.values())
    restored = last_restore(deployment)
    assert restored == tail
    assert restored < total

    await deployment.publish(*requests[600:])
    decisions = await deployment.decided([r.context.request_id for r in requests], 120)
    assert len(decisions) == len(requests)
    assert await deployment.reader.caught_up()
    assert deployment.duplicates == []
    assert deployment.workers[-1].stop() == 0
    await assert_disk_is_the_committed_changelog(deployment, whole=True)


async def test_writes_of_a_transaction_that_never_commits_never_reach_the_files(
    services: Services, tmp_path: Path, ad_url: str
) -> None:
    # Commits only at the end of an hour: every transaction stays open until the kill.
    never = {"ADSTREAM_COMMIT_INTERVAL_S": "3600"}
    async with Deployment(
        services.kafka_bootstrap_servers,
        services.redis_url,
        tmp_path,
        store="rocksdb",
        extra_env=never,
    ) as deployment:
        rules = campaign(ad_url, caps=[(1, 3600)])
        await deployment.load(rules)
        requests = [request(rules.campaign_id, BASE_MS + i, f"user-{i}") for i in range(40)]
        ids = {r.context.request_id.encode() for r in requests}
        await deployment.publish(*requests)

        async def sent() -> set[bytes]:
            """The request ids whose `seen` writes reached the changelog, committed or not."""
            return {
                key
                for partition in range(deployment.partitions)
                for _, _, key, _ in await changelog(deployment, "seen", partition, committed=False)
            }

        deadline = time.monotonic() + 60
        while not ids <= await sent():
            assert time.monotonic() < deadline, "the worker did not decide the requests"
        assert deployment.workers[0].stop(signal.SIGKILL) == -signal.SIGKILL

        for table in TABLES:
            for partition in range(deployment.partitions):
                assert on_disk(tabledir(deployment), table, partition) == (None, {})

        never.clear()
        await deployment.add_worker(index=0)
        assert last_restore(deployment) == 0  # nothing had committed
        decisions = await deployment.decided([r.context.request_id for r in requests])
        assert [d.topic for d in decisions] == ["served"] * len(requests)
        assert await deployment.reader.caught_up()
        assert deployment.duplicates == []
        assert deployment.workers[-1].stop() == 0
        await assert_disk_is_the_committed_changelog(deployment, whole=True)
        for partition in range(deployment.partitions):
            assert ids & set(on_disk(tabledir(deployment), "seen", partition)[1])


async def test_a_worker_back_on_its_partitions_restores_only_what_another_wrote_meanwhile(
    rocksdb_deployment: Deployment, ad_url: str
) -> None:
    deployment = rocksdb_deployment
    rules = campaign(ad_url, caps=[(3, 3600)], lifetime="100.00")
    await deployment.load(rules)

    async def decide(first: int, count: int) -> None:
        requests = [
            request(rules.campaign_id, BASE_MS + i, f"user-{i % 50}")
            for i in range(first, first + count)
        ]
        await deployment.decided(await deployment.publish(*requests))

    await decide(0, 100)
    assert deployment.workers[0].stop(signal.SIGKILL) == -signal.SIGKILL
    left = await assert_disk_is_the_committed_changelog(deployment, whole=False)

    await deployment.add_worker(index=1)  # an empty data directory: it restores everything
    assert last_restore(deployment) == sum(len(records) for _, records in left.values())
    await decide(100, 100)
    assert deployment.workers[-1].stop() == 0

    restarted_ms = time.time() * 1000
    await deployment.add_worker(index=0)
    # Exactly the committed records after the offsets worker 0's files hold (those it wrote
    # once restored, rules reaching its banks, came after).
    meanwhile = await written_after(deployment, left, restarted_ms)
    assert 0 < meanwhile == last_restore(deployment)
    await decide(200, 50)
    assert await deployment.reader.caught_up()
    assert deployment.duplicates == []
    assert deployment.workers[-1].stop() == 0
    await assert_disk_is_the_committed_changelog(deployment, whole=True)
