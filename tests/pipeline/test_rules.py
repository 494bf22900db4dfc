"""The design's rules, end to end: requests through a real worker, decisions read back with
read_committed. Event times are set explicitly (hours of event time pass in seconds)."""

from __future__ import annotations

from aiohttp import web

from models.money import to_micros
from streams.lookaside import LookasideClient
from tests.pipeline.harness import BASE_MS, DAY_MS, Decision, Deployment, campaign, request
from tests.upstream import VastServer, inline, vast

MINUTE = 60_000
HOUR = 3_600_000


def outcomes(decisions: list[Decision]) -> list[str]:
    return [f"{d.topic}:{d.reason}" if d.reason else d.topic for d in decisions]


async def test_cap_is_hit_at_exactly_max(deployment: Deployment, ad_url: str) -> None:
    rules = campaign(ad_url, caps=[(3, 3600)])
    await deployment.load(rules)
    requests = [request(rules.campaign_id, BASE_MS + i * MINUTE, "max-user") for i in range(5)]
    decisions = await deployment.decided(await deployment.publish(*requests))
    assert outcomes(decisions) == ["served"] * 3 + ["denied:frequency_cap"] * 2
    assert decisions[3].payload["detail"] == "3/3600s"


async def test_window_slides_by_event_time(deployment: Deployment, ad_url: str) -> None:
    rules = campaign(ad_url, caps=[(1, 3600)])
    await deployment.load(rules)
    at = [0, 30 * MINUTE, HOUR, HOUR + 1, 2 * HOUR + 2]
    requests = [request(rules.campaign_id, BASE_MS + DAY_MS + t, "slider") for t in at]
    decisions = await deployment.decided(await deployment.publish(*requests))
    # (t - 1h, t]: the impression at 0 has left the window at exactly 1h.
    assert outcomes(decisions) == [
        "served",
        "denied:frequency_cap",
        "served",
        "denied:frequency_cap",
        "served",
    ]


async def test_two_caps_the_most_restrictive_wins(deployment: Deployment, ad_url: str) -> None:
    rules = campaign(ad_url, caps=[(3, 86_400), (1, 600)])
    await deployment.load(rules)
    at = [0, 5 * MINUTE, 11 * MINUTE, 22 * MINUTE, 33 * MINUTE]
    requests = [request(rules.campaign_id, BASE_MS + 2 * DAY_MS + t, "two-caps") for t in at]
    decisions = await deployment.decided(await deployment.publish(*requests))
    assert outcomes(decisions) == [
        "served",
        "denied:frequency_cap",
        "served",
        "served",
        "denied:frequency_cap",
    ]
    assert decisions[1].payload["detail"] == "1/600s"
    assert decisions[4].payload["detail"] == "3/86400s"


async def test_budget_spent_to_the_micro(deployment: Deployment, ad_url: str) -> None:
    # cpm 2.505 -> 2505 micros an impression; 3 fit in 7515 micros, a 4th does not.
    rules = campaign(ad_url, cpm="2.505", lifetime="0.007515")
    await deployment.load(rules)
    # One user: its requests share a partition, so the stage sees them in this order.
    requests = [request(rules.campaign_id, BASE_MS + i, "spender") for i in range(4)]
    decisions = await deployment.decided(await deployment.publish(*requests))
    assert outcomes(decisions) == ["served"] * 3 + ["denied:budget_exhausted"]
    assert [d.payload.get("cost") for d in decisions[:3]] == ["0.002505"] * 3
    assert decisions[3].payload["detail"] == "lifetime"
    state = await deployment.state(rules.campaign_id)
    assert state.spend is not None
    assert state.spend.lifetime == 3 * 2505 == to_micros("0.007515")


async def test_daily_budget_rolls_over_at_utc_midnight(deployment: Deployment, ad_url: str) -> None:
    rules = campaign(ad_url, cpm="1000", daily="2")  # 1.00 an impression, 2.00 a day
    await deployment.load(rules)
    midnight = BASE_MS + 5 * DAY_MS
    at = [midnight - 3, midnight - 2, midnight - 1, midnight, midnight + 1, midnight + 2]
    requests = [request(rules.campaign_id, t, "daily") for t in at]
    decisions = await deployment.decided(await deployment.publish(*requests))
    assert outcomes(decisions) == [
        "served",
        "served",
        "denied:budget_exhausted",
        "served",
        "served",
        "denied:budget_exhausted",
    ]
    assert decisions[2].payload["detail"] == "daily"


async def test_anonymous_users(deployment: Deployment, ad_url: str) -> None:
    capped = campaign(ad_url, caps=[(1, 3600)])
    uncapped = campaign(ad_url, caps=[(1, 3600)], anonymous_policy="uncapped")
    await deployment.load(capped, uncapped)
    t = BASE_MS + 6 * DAY_MS
    anonymous = [
        {},  # no user_id cookie
        {"user_id": "anonymous"},
        {"user_id": "gdpr-user", "gdpr": "1"},  # GDPR applies, no consent
    ]
    denied = [request(capped.campaign_id, t, None, cookies=c) for c in anonymous]
    served = [request(uncapped.campaign_id, t, None, cookies=c) for c in anonymous]
    consented = request(capped.campaign_id, t, None, cookies={
        "user_id": "gdpr-ok", "gdpr": "1", "gdpr_consent": "1"
    })  # fmt: skip
    decisions = await deployment.decided(await deployment.publish(*denied, *served, consented))
    assert outcomes(decisions) == ["denied:anonymous"] * 3 + ["served"] * 4
    assert [d.payload["user_id"] for d in decisions[3:6]] == [None, None, None]
    assert decisions[6].payload["user_id"] == "gdpr-ok"


async def test_duplicates_get_no_second_decision(deployment: Deployment, ad_url: str) -> None:
    rules = campaign(ad_url, lifetime="1")
    await deployment.load(rules)
    original = request(rules.campaign_id, BASE_MS + 7 * DAY_MS, "dup-user")
    later = request(rules.campaign_id, BASE_MS + 7 * DAY_MS + 1, "dup-user")
    await deployment.publish(original, original, later, original)
    await deployment.decided([original.context.request_id, later.context.request_id])
    state = await deployment.state(rules.campaign_id)
    assert state.spend is not None and state.spend.lifetime == 2 * 2500
    assert await deployment.settled()  # no duplicate can arrive after this
    assert deployment.duplicates == []


async def test_unknown_and_inactive_campaigns(deployment: Deployment, ad_url: str) -> None:
    inactive = campaign(ad_url, active=False)
    (version,) = await deployment.load(inactive)
    t = BASE_MS + 8 * DAY_MS
    unknown = request("no-such-campaign", t, "u")
    off = request(inactive.campaign_id, t, "u")
    decisions = await deployment.decided(await deployment.publish(unknown, off))
    assert outcomes(decisions) == ["denied:campaign_unknown", "denied:campaign_inactive"]
    assert decisions[0].payload["campaign_version"] is None
    assert decisions[1].payload["campaign_version"] == version


async def test_campaign_update_applies_to_later_requests(
    deployment: Deployment, ad_url: str
) -> None:
    first = campaign(ad_url, caps=[(1, 3600)])
    (v1,) = await deployment.load(first)
    t = BASE_MS + 9 * DAY_MS
    before = [request(first.campaign_id, t + i, "upd") for i in range(2)]
    decided_before = await deployment.decided(await deployment.publish(*before))
    second = campaign(ad_url, campaign_id=first.campaign_id, caps=[(3, 3600)], cpm="4.00")
    (v2,) = await deployment.load(second)
    after = [request(first.campaign_id, t + 10 + i, "upd") for i in range(3)]
    decided_after = await deployment.decided(await deployment.publish(*after))
    assert outcomes(decided_before) == ["served", "denied:frequency_cap"]
    assert [d.payload["campaign_version"] for d in decided_before] == [v1, v1]
    # The new cap counts the impression served under v1: 1 + 2 more = 3.
    assert outcomes(decided_after) == ["served", "served", "denied:frequency_cap"]
    assert [d.payload["campaign_version"] for d in decided_after] == [v2, v2, v2]
    assert decided_after[0].payload["cost"] == "0.004"
    assert v2 > v1


async def test_no_ad_and_upstream_errors_release_reservations(
    deployment: Deployment, ad_url: str, no_ad_url: str, broken_url: str
) -> None:
    t = BASE_MS + 10 * DAY_MS
    decisions = []
    for failing, reason in ((no_ad_url, "no_fill"), (broken_url, "upstream_error")):
        # One slot of cap and exactly one impression of budget: a failed request must give
        # both back, so that the next request (served by a working upstream) gets them.
        rules = campaign(failing, caps=[(1, 3600)], lifetime="0.0025")
        await deployment.load(rules)
        miss = request(rules.campaign_id, t, "releaser")
        decisions += await deployment.decided(await deployment.publish(miss))
        fixed = campaign(ad_url, campaign_id=rules.campaign_id, caps=[(1, 3600)], lifetime="0.0025")
        await deployment.load(fixed)
        hit = request(rules.campaign_id, t + 1, "releaser")
        decisions += await deployment.decided(await deployment.publish(hit))
        assert decisions[-2].reason == reason
    assert outcomes(decisions) == [
        "denied:no_fill",
        "served",
        "denied:upstream_error",
        "served",
    ]
    assert decisions[0].payload["detail"] == "303" or decisions[0].payload["detail"].isdigit()


async def test_requests_overlapping_in_one_batch_decide_as_if_one_at_a_time(
    deployment: Deployment, vast_server: VastServer
) -> None:
    # Requests asking for no ad (params reach the upstream's query) alternate with ones that
    # fill, all in flight together: each failure must hand its cap slot or its budget to a
    # later request, exactly as if they were decided one at a time.
    async def fill_unless_told(http_request: web.Request) -> web.Response:
        empty = http_request.query.get("fill") == "0"
        return web.Response(body=vast() if empty else vast(inline()))

    url = vast_server.add(handler=fill_unless_told, name="switch.xml")
    capped = campaign(url, caps=[(2, 3600)])
    budgeted = campaign(url, lifetime="0.005")
    await deployment.load(capped, budgeted)
    t = BASE_MS + 11 * DAY_MS
    expected = {
        capped.campaign_id: ["denied:no_fill", "served"] * 2 + ["denied:frequency_cap"] * 2,
        budgeted.campaign_id: ["denied:no_fill", "served"] * 2 + ["denied:budget_exhausted"] * 2,
    }
    for campaign_id, outcome in expected.items():
        requests = [
            request(campaign_id, t + i, "burst", params={"fill": "0" if i % 2 == 0 else "1"})
            for i in range(6)
        ]
        decisions = await deployment.decided(await deployment.publish(*requests))
        assert outcomes(decisions) == outcome


async def test_a_cap_added_later_counts_impressions_served_uncapped(
    deployment: Deployment, ad_url: str
) -> None:
    # Every impression counts (docs/design.md), whether or not a cap was configured when it was
    # served: the worker records them all.
    uncapped = campaign(ad_url)
    await deployment.load(uncapped)
    t = BASE_MS + 21 * DAY_MS
    served = [
        request(uncapped.campaign_id, t, "ann"),
        request(uncapped.campaign_id, t + MINUTE, "ann"),
        request(uncapped.campaign_id, t + 2 * MINUTE, "ben"),
    ]
    assert outcomes(await deployment.decided(await deployment.publish(*served))) == ["served"] * 3
    capped = campaign(ad_url, campaign_id=uncapped.campaign_id, caps=[(2, 3600)])
    (version,) = await deployment.load(capped)
    # An edge asking before any capped impression: Redis holds no view of Ann (none is
    # written for an uncapped campaign), the worker's route answers from every impression.
    edge = LookasideClient(
        deployment.redis_url, deployment.alive_worker().url(""), prefix=f"{deployment.name}-"
    )
    try:
        assert await edge.is_capped(uncapped.campaign_id, "ann", t + 10 * MINUTE)
        assert not await edge.is_capped(uncapped.campaign_id, "ben", t + 10 * MINUTE)
    finally:
        await edge.aclose()
    later = [
        request(uncapped.campaign_id, t + 10 * MINUTE, "ann"),  # two already: refused
        request(uncapped.campaign_id, t + 11 * MINUTE, "ben"),  # one: served, ...
        request(uncapped.campaign_id, t + 12 * MINUTE, "ben"),  # ... then refused
        request(uncapped.campaign_id, t + HOUR - 1, "ann"),  # both still inside (t-1h, t]
        request(uncapped.campaign_id, t + HOUR, "ann"),  # t has left the window
        request(uncapped.campaign_id, t + HOUR + 1, "ann"),  # t + 1 min has not
    ]
    decisions = await deployment.decided(await deployment.publish(*later))
    assert outcomes(decisions) == [
        "denied:frequency_cap",
        "served",
        "denied:frequency_cap",
        "denied:frequency_cap",
        "served",
        "denied:frequency_cap",
    ]
    assert {d.payload["detail"] for d in decisions if d.reason} == {"2/3600s"}
    assert {d.payload["campaign_version"] for d in decisions} == {version}
    state = await deployment.state(uncapped.campaign_id, "ann")
    assert state.cap is not None
    assert state.cap.times == [t, t + MINUTE, t + HOUR]


async def test_a_lengthened_window_counts_impressions_the_shorter_one_let_go(
    deployment: Deployment, ad_url: str
) -> None:
    # Under 1 per 10 min, Cy's two impressions 20 min apart are long out of every window
    # once Dee, hours ahead in event time on the same campaign partition, moves its
    # watermark. They are still kept (the impression history), so the day-long window an
    # update brings counts them.
    short = campaign(ad_url, caps=[(1, 600)])
    await deployment.load(short)
    t = BASE_MS + 22 * DAY_MS
    first = [
        request(short.campaign_id, t, "cy"),
        request(short.campaign_id, t + 20 * MINUTE, "cy"),
        request(short.campaign_id, t + 3 * HOUR, "dee"),
    ]
    assert outcomes(await deployment.decided(await deployment.publish(*first))) == ["served"] * 3
    long = campaign(ad_url, campaign_id=short.campaign_id, caps=[(3, 86_400)])
    await deployment.load(long)
    later = [
        request(short.campaign_id, t + 3 * HOUR + 1, "cy"),  # two in the day: the third
        request(short.campaign_id, t + 3 * HOUR + 2, "cy"),  # the fourth: refused
        request(short.campaign_id, t + DAY_MS, "cy"),  # t has left the day
    ]
    decisions = await deployment.decided(await deployment.publish(*later))
    assert outcomes(decisions) == ["served", "denied:frequency_cap", "served"]
    assert decisions[1].payload["detail"] == "3/86400s"
