"""Hand-made histories written straight to real topics (transactional producer, read back
read_committed): each forgery is caught and named with its request id, nothing else is, and
the command exits 1 listing them."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from infra.postgres_server import PostgresServer
from models.context import user_key
from models.events import AdDenied, AdRequest, AdServed
from streams.audit.findings import Summary
from streams.audit.window import Window, iso
from streams.topics import Topics, key_partition
from tests.audit.kafka import PARTITIONS, HistoryWriter, audit_topics, found, run_cli
from tests.audit.support import URL, campaign, denied, request, served
from tests.pipeline.harness import BASE_MS
from tests.png import png_dimensions

MINUTE = 60_000
T = BASE_MS + 3_600_000


class Forged(msgspec.Struct):
    prefix: str
    topics: Topics
    expected: set[tuple[str, str | None]]
    summary: Summary


@pytest.fixture(scope="module")
async def forged(kafka_bootstrap: str) -> AsyncIterator[Forged]:
    prefix = f"audit-bad-{uuid.uuid4().hex[:8]}-"
    topics = Topics.named(prefix)
    expected: set[tuple[str, str | None]] = set()
    async with HistoryWriter(kafka_bootstrap, topics) as writer:
        capped, budget, plain, other = await writer.campaigns(
            campaign(URL, campaign_id="capped", caps=[(2, 3600)]),
            campaign(URL, campaign_id="budget", cpm="5.00", lifetime="0.01"),
            campaign(URL, campaign_id="plain", cpm="2.50"),
            campaign(URL, campaign_id="other", cpm="2.50"),
        )
        requests: list[AdRequest] = []
        decisions: list[AdServed | AdDenied] = []

        def decide(item: AdRequest, event: AdServed | AdDenied) -> None:
            requests.append(item)
            decisions.append(event)

        # A served event over a cap: the third impression of u-cap within an hour.
        over_cap = [request("capped", T + i * MINUTE, "u-cap") for i in range(3)]
        for item in over_cap:
            decide(item, served(item, capped))
        expected.add(("cap_exceeded", over_cap[2].context.request_id))
        # An overspend: 3 impressions at 0.005 against a budget of 0.01.
        spenders = [request("budget", T + i, f"u-spend-{i}") for i in range(3)]
        for item in spenders:
            decide(item, served(item, budget))
        expected.add(("budget_exceeded", spenders[2].context.request_id))
        # None of them spent from a lease: the first on each partition is beyond its lease.
        firsts: dict[int, str] = {}
        for item in spenders:
            partition = key_partition(user_key(item.context), PARTITIONS)
            firsts.setdefault(partition, item.context.request_id)
        expected |= {("lease_overspent", request_id) for request_id in firsts.values()}
        # A duplicate decision.
        twice = request("plain", T, "u-twice")
        decide(twice, served(twice, plain))
        decisions.append(served(twice, plain))
        expected.add(("duplicate_decision", twice.context.request_id))
        # A request with no decision.
        ignored = request("plain", T + 1, "u-ignored")
        requests.append(ignored)
        expected.add(("no_decision", ignored.context.request_id))
        # A wrong cost.
        overcharged = request("plain", T + 2, "u-overcharged")
        decide(overcharged, served(overcharged, plain, cost="0.0030"))
        expected.add(("wrong_cost", overcharged.context.request_id))
        # A decision naming another campaign's configuration.
        misversioned = request("plain", T + 3, "u-misversioned")
        decide(misversioned, served(misversioned, plain, version=other.version))
        expected.add(("wrong_version", misversioned.context.request_id))
        # A decision for a request nobody sent.
        phantom = request("plain", T + 4, "u-phantom")
        decisions.append(denied(phantom, "no_fill", plain.version, "303"))
        expected.add(("decision_without_request", phantom.context.request_id))
        # What must pass: a correct denial, a re-sent request, a malformed message.
        fine = request("capped", T + 5, "u-fine")
        decide(fine, denied(fine, "no_fill", capped.version, "303"))
        requests.append(fine)
        await writer.write(requests, decisions, raw_requests=[(b'{"schema": 1', T)])
        # An aborted transaction's serve (over the cap, a second decision) never counts.
        await writer.write(
            decisions=[served(fine, capped), served(over_cap[0], capped)], abort=True
        )
    audit, _ = await audit_topics(kafka_bootstrap, topics)
    yield Forged(prefix, topics, expected, audit.summary)


async def test_each_forgery_is_named_and_nothing_else(forged: Forged) -> None:
    assert found(forged.summary) == forged.expected
    summary = forged.summary
    assert summary.dead_lettered == {"undecodable": 1}
    assert (summary.duplicates, summary.distinct) == (1, 11)


async def test_the_command_exits_1_listing_each_request(
    kafka_bootstrap: str, forged: Forged
) -> None:
    result = await run_cli(kafka_bootstrap, forged.prefix)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    for kind, request_id in forged.expected:
        assert any(kind in line and str(request_id) in line for line in lines), (kind, request_id)
    assert f"VIOLATIONS: {len(forged.expected)}" in result.stdout
    result = await run_cli(kafka_bootstrap, forged.prefix, "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert {(v["kind"], v["request_id"]) for v in document["violations"]} == forged.expected
    assert document["spend"] == [
        {"campaign_id": "budget", "currency": "USD", "served": 3, "spent": "0.015"},
        {"campaign_id": "capped", "currency": "USD", "served": 3, "spent": "0.0075"},
        {
            "campaign_id": "plain",
            "currency": "USD",
            "served": 3,
            "spent": "0.008",
        },  # one overcharged
    ]


async def test_the_command_draws_what_it_audited(
    kafka_bootstrap: str, forged: Forged, tmp_path: Path
) -> None:
    plot = tmp_path / "audit.png"
    result = await run_cli(kafka_bootstrap, forged.prefix, "--json", "--plot", str(plot))
    assert result.returncode == 1, result.stderr  # the forgeries are still found
    assert json.loads(result.stdout)["violations"]
    assert f"plot: {plot}" in result.stderr
    assert png_dimensions(plot)[0] == 1200


async def test_a_postgresql_ledger_is_opened_as_such(
    kafka_bootstrap: str, forged: Forged, postgres: PostgresServer
) -> None:
    empty = postgres.create_database(f"audit_{uuid.uuid4().hex}")
    result = await run_cli(kafka_bootstrap, forged.prefix, "--ledger", empty)
    assert result.returncode == 2, result.stderr
    assert f"no ledger at {empty}" in result.stderr


async def test_a_window_reports_only_what_lies_inside(kafka_bootstrap: str, forged: Forged) -> None:
    # From the third capped impression on: the two before it still count for the cap.
    window = Window(T + 2 * MINUTE, T + 3 * MINUTE)
    audit, _ = await audit_topics(kafka_bootstrap, forged.topics, window)
    assert [v.kind for v in audit.summary.violations] == ["cap_exceeded"]
    result = await run_cli(
        kafka_bootstrap, forged.prefix, "--from", iso(T + 2 * MINUTE), "--to", str(T + 3 * MINUTE)
    )
    assert result.returncode == 1
    assert "cap_exceeded" in result.stdout and "wrong_cost" not in result.stdout


async def test_bad_arguments_and_missing_topics_exit_2(kafka_bootstrap: str) -> None:
    result = await run_cli(kafka_bootstrap, "no-such-deployment-", "--from", "yesterday")
    assert result.returncode == 2 and "--from" in result.stderr
    result = await run_cli(kafka_bootstrap, "no-such-deployment-")
    assert result.returncode == 2 and "no topic" in result.stderr
