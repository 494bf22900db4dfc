"""`EdgePublisher` against a real worker: the records it writes, `decide()` for hundreds of
concurrent callers, and timeouts that return a result and leave no waiter behind."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from docs.examples.edge_server import NO_AD, edge_app
from infra.process import free_port
from models.codec import decode_request
from models.context import SessionContext
from models.events import SCHEMA_VERSION, AdDenied, AdRequest, AdServed
from streams.admin import ensure_topics
from streams.edge import DecisionTimeout, EdgePublisher, PublishError
from streams.settings import Settings
from streams.topics import Topics
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request

CONCURRENT = 300


def fresh_request(campaign_id: str, cookies: dict[str, str]) -> AdRequest:
    """A request as an edge makes it: a fresh context from the incoming HTTP cookies."""
    return AdRequest(
        schema=SCHEMA_VERSION,
        context=SessionContext.create(cookies=cookies, timestamp=BASE_MS + 5_000),
        campaign_id=campaign_id,
        placement_id="home-preroll",
        params={},
    )


async def test_decide_routes_hundreds_of_concurrent_decisions(
    deployment: Deployment, ad_url: str
) -> None:
    capped = campaign(ad_url, caps=[(1, 3600)])
    await deployment.load(capped)
    # Each user asks twice: the first is served, the second hits the cap of one.
    requests = [
        fresh_request(capped.campaign_id, {"user_id": f"edge-user-{i % (CONCURRENT // 2)}"})
        for i in range(CONCURRENT)
    ]
    async with EdgePublisher(deployment.bootstrap, deployment.topics) as edge:
        decisions = await asyncio.gather(*(edge.decide(r, timeout=60.0) for r in requests))
        assert edge.waiting == 0

    for sent, decision in zip(requests, decisions, strict=True):
        assert isinstance(decision, AdServed | AdDenied), decision
        assert decision.request_id == sent.context.request_id
    served = [d for d in decisions if isinstance(d, AdServed)]
    denied = [d for d in decisions if isinstance(d, AdDenied)]
    assert len(served) == len(denied) == CONCURRENT // 2
    assert {d.user_id for d in served} == {f"edge-user-{i}" for i in range(CONCURRENT // 2)}
    assert {d.reason for d in denied} == {"frequency_cap"}
    assert all("<InLine>" in d.vast for d in served)


async def test_records_are_keyed_by_user_and_stamped_with_event_time(
    deployment: Deployment, ad_url: str
) -> None:
    known = fresh_request("c-records", {"user_id": "u-records"})
    # No consent under GDPR: anonymous, so keyed by its request id.
    withheld = fresh_request("c-records", {"user_id": "u-records", "gdpr": "1"})
    async with EdgePublisher(deployment.bootstrap, deployment.topics) as edge:
        await edge.publish(known)
        await edge.publish(withheld)

    reader = AIOKafkaConsumer(
        deployment.topics.requests,
        bootstrap_servers=deployment.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        found: dict[str, ConsumerRecord[bytes, bytes]] = {}
        deadline = time.monotonic() + 20
        while len(found) < 2 and time.monotonic() < deadline:
            for records in (await reader.getmany(timeout_ms=200)).values():
                for record in records:
                    sent = decode_request(record.value)
                    if sent.campaign_id == "c-records":
                        found[sent.context.request_id] = record
    finally:
        await reader.stop()
    assert found[known.context.request_id].key == b"u-records"
    assert found[withheld.context.request_id].key == withheld.context.request_id.encode()
    assert {r.timestamp for r in found.values()} == {BASE_MS + 5_000}


async def test_decide_times_out_with_a_result_when_no_worker_runs(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topics = Topics.named(f"{unique_name}-")
    await ensure_topics(kafka_bootstrap, topics, partitions=2)
    async with EdgePublisher(kafka_bootstrap, topics) as edge:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(edge.decide(request("c-nobody", BASE_MS, f"u{i}"), timeout=0.5) for i in range(50))
        )
        elapsed = time.monotonic() - started
        assert edge.waiting == 0
    assert all(isinstance(o, DecisionTimeout) for o in outcomes)
    assert all(0.5 <= o.waited_s < 5 for o in outcomes if isinstance(o, DecisionTimeout))
    assert elapsed < 5


async def test_missing_topic_and_unreachable_broker_fail_clearly(
    kafka_bootstrap: str, unique_name: str
) -> None:
    with pytest.raises(PublishError, match="does not exist"):
        async with EdgePublisher(kafka_bootstrap, Topics.named(f"{unique_name}-never-")):
            pass
    with pytest.raises(PublishError, match="cannot reach"):
        async with EdgePublisher(f"127.0.0.1:{free_port()}", Topics.named(f"{unique_name}-")):
            pass


async def test_the_documented_edge_server_answers_players(
    deployment: Deployment, ad_url: str
) -> None:
    capped = campaign(ad_url, caps=[(1, 86_400)])
    await deployment.load(capped)
    settings = Settings(
        kafka_bootstrap_servers=deployment.bootstrap, topic_prefix=f"{deployment.name}-"
    )
    async with TestClient(TestServer(edge_app(settings), host="127.0.0.1")) as player:
        url = f"/ad?campaign={capped.campaign_id}&placement=home"
        answers = []
        for cookies in (
            {"user_id": "viewer"},
            {"user_id": "viewer"},
            {"user_id": "v", "gdpr": "1"},
        ):
            player.session.cookie_jar.clear()
            player.session.cookie_jar.update_cookies(cookies)
            # A cold worker may miss the player's deadline; the edge then answers without an ad.
            for _ in range(20):
                response = await player.get(url)
                if response.headers.get("X-Ad-Outcome") != "timeout":
                    break
            answers.append(
                (response.status, response.headers.get("X-Ad-Outcome"), await response.text())
            )
        missing = await player.get("/ad")
    assert answers[0][0] == 200 and answers[0][1] is None and "<InLine>" in answers[0][2]
    assert answers[1] == (200, "denied:frequency_cap", NO_AD)
    assert answers[2] == (200, "denied:anonymous", NO_AD)
    assert missing.status == 400
