"""A real worker's history passes the audit: demo-style traffic (Zipf users meeting their
caps, budgets running out, anonymous users, re-sent and malformed messages, an unknown and a
paused campaign, an upstream without ads) and a campaign update in the middle of it. Billing
runs on it for real, and its ledger reconciles; a tampered copy does not.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from infra.provision import Services
from models.events import Campaign
from streams.audit.verify import Audit
from streams.audit.window import iso
from streams.billing import consumer as billing
from streams.billing.ledger import Ledger
from streams.demo.traffic import Message, Traffic, TrafficPlan, generate
from tests.audit.kafka import audit_topics, found, run_cli
from tests.pipeline.harness import BASE_MS, DAY_MS, Deployment, campaign, request
from tests.upstream import VastServer, inline, vast

HOUR = 3_600_000
RATE = 400
"""Messages a second: a live stream, not a backlog (see streams/demo/run.py, `_publish`)."""


class Run(msgspec.Struct):
    deployment: Deployment
    configs: list[Campaign]
    traffic: Traffic
    audit: Audit
    ledger: Path


async def _publish(producer: AIOKafkaProducer, topic: str, messages: Sequence[Message]) -> None:
    started = time.monotonic()
    for index in range(0, len(messages), 20):
        await asyncio.sleep(started + index / RATE - time.monotonic())
        for message in messages[index : index + 20]:
            record = message.record
            await producer.send(
                topic, record.value, key=record.key, timestamp_ms=record.timestamp_ms
            )
    await producer.flush()


@pytest.fixture(scope="module")
async def run(
    services: Services, tmp_path_factory: pytest.TempPathFactory, vast_server: VastServer
) -> AsyncIterator[Run]:
    root = tmp_path_factory.mktemp("audit-worker")
    ad_url = vast_server.add(vast(inline()), name="audit-ad.xml")
    empty_url = vast_server.add(vast(), name="audit-empty.xml")
    deployment = Deployment(services.kafka_bootstrap_servers, services.redis_url, root)
    await deployment.start()
    try:
        configs = [
            campaign(ad_url, campaign_id="capped", caps=[(2, 3600), (4, 86_400)]),
            campaign(ad_url, campaign_id="budget", cpm="5.125", lifetime="0.1", daily="0.06"),
            campaign(ad_url, campaign_id="anon-ok", caps=[(1, 1800)], anonymous_policy="uncapped"),
            campaign(ad_url, campaign_id="paused", active=False),
            campaign(empty_url, campaign_id="empty"),
        ]
        await deployment.load(*configs)
        plan = TrafficPlan(end_ms=BASE_MS + 20 * DAY_MS, requests=700, users=40, hours=3, seed=11)
        traffic = generate(plan, configs)
        half = len(traffic.messages) // 2
        producer = deployment.producer
        await _publish(producer, deployment.topics.requests, traffic.messages[:half])
        await deployment.load(campaign(ad_url, campaign_id="capped", caps=[(3, 3600)], cpm="3.125"))
        await _publish(producer, deployment.topics.requests, traffic.messages[half:])
        await deployment.decided(traffic.request_ids, timeout_s=90)
        audit, _ = await audit_topics(deployment.bootstrap, deployment.topics)
        ledger = root / "ledger.sqlite"
        with Ledger.open(ledger) as book:
            await billing.run(
                deployment.bootstrap,
                deployment.topics.served,
                book,
                asyncio.Event(),
                until_caught_up=True,
            )
        yield Run(deployment, configs, traffic, audit, ledger)
    finally:
        await deployment.stop()


def prefix(run: Run) -> str:
    return f"{run.deployment.name}-"


async def test_the_workers_history_passes(run: Run) -> None:
    summary, traffic = run.audit.summary, run.traffic
    assert summary.violations == []
    assert summary.requests == len(traffic.messages)
    assert sum(summary.dead_lettered.values()) == traffic.count("malformed")
    assert summary.duplicates == traffic.count("duplicate")
    assert summary.distinct == len(traffic.request_ids)
    assert summary.served + sum(summary.denied.values()) == summary.distinct
    # The traffic exercised what the audit checks.
    assert {"frequency_cap", "budget_exhausted", "campaign_unknown", "campaign_inactive"} <= set(
        summary.denied
    )
    assert {"anonymous", "no_fill"} <= set(summary.denied)
    versions = {d.payload["campaign_version"] for d in run.audit.served}
    assert len({v for v in versions if v is not None}) >= 3  # capped served under both
    # Budgets were spent from leases on several partitions, each checked against them.
    assert summary.records["leases"] > 0


async def test_the_command_exits_0_also_for_a_window(run: Run) -> None:
    bootstrap = run.deployment.bootstrap
    result = await run_cli(bootstrap, prefix(run))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "violations: none" in result.stdout
    plan = run.traffic.plan
    middle = plan.start_ms + (plan.end_ms - plan.start_ms) // 2
    result = await run_cli(bootstrap, prefix(run), "--from", iso(middle), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert 0 < document["distinct"] < run.audit.summary.distinct
    assert document["window"]["from_ms"] == middle


async def test_the_ledger_reconciles_and_a_tampered_copy_does_not(run: Run, tmp_path: Path) -> None:
    bootstrap = run.deployment.bootstrap
    result = await run_cli(bootstrap, prefix(run), "--ledger", str(run.ledger))
    assert result.returncode == 0, result.stdout + result.stderr
    served = run.audit.summary.served
    assert f"{served:,} matching their served decision" in result.stdout
    tampered = tmp_path / "tampered.sqlite"
    shutil.copy(run.ledger, tampered)
    with sqlite3.connect(tampered) as db:
        rows = db.execute("SELECT request_id FROM charges ORDER BY partition, offset").fetchall()
        (dropped,), (changed,) = rows[0], rows[1]
        db.execute("DELETE FROM charges WHERE request_id = ?", (dropped,))
        db.execute(
            "UPDATE charges SET cost_micros = cost_micros + 1 WHERE request_id = ?", (changed,)
        )
        db.execute(
            "INSERT INTO charges VALUES ('req-invented', 'capped', ?, 2500, 'USD', 0, 999999)",
            (run.traffic.plan.end_ms - 1,),
        )
    result = await run_cli(bootstrap, prefix(run), "--ledger", str(tampered), "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert {(v["kind"], v["request_id"]) for v in document["violations"]} == {
        ("ledger_missing", dropped),
        ("ledger_mismatch", changed),
        ("ledger_extra", "req-invented"),
    }


async def test_a_cap_added_later_counts_earlier_impressions(run: Run) -> None:
    """Runs last: it adds to the history the tests above found clean."""
    deployment = run.deployment
    capped = next(c for c in run.configs if c.campaign_id == "capped")
    uncapped = msgspec.structs.replace(capped, campaign_id="late-cap", frequency_caps=())
    await deployment.load(uncapped)
    t = BASE_MS + 25 * DAY_MS
    before = [request("late-cap", t + i * 60_000, "late-user") for i in range(3)]
    await deployment.decided(await deployment.publish(*before))
    await deployment.load(msgspec.structs.replace(capped, campaign_id="late-cap"))
    after = request("late-cap", t + 4 * 60_000, "late-user")
    (decision,) = await deployment.decided(await deployment.publish(after))
    audit, _ = await audit_topics(deployment.bootstrap, deployment.topics)
    assert found(audit.summary) == set(), (decision.topic, audit.summary.violations)
    # Three served uncapped within the hour: the new 2-per-hour cap refuses the fourth.
    assert (decision.topic, decision.reason) == ("denied", "frequency_cap")
