"""The late rule through a real worker: other users' event times running ahead on the same
partition make no request late; only a window reaching behind what its own key may have lost
(here the whole key, aged out by the partition's newest event time) does. Its own worker: the
test moves its partition's event time a week ahead."""

from __future__ import annotations

from streams.settings import DEFAULT_IMPRESSION_HISTORY_S
from streams.state.frequency import ALLOWED_LATENESS_MS
from tests.pipeline.harness import BASE_MS, DAY_MS, Deployment, campaign, request

MINUTE = 60_000
HOUR = 3_600_000


async def test_late_only_behind_what_the_requests_own_key_may_have_lost(
    deployment: Deployment, ad_url: str
) -> None:
    rules = campaign(ad_url, caps=[(2, 1800)])
    await deployment.load(rules)  # one campaign: every user's requests on one partition
    t = BASE_MS + 10 * DAY_MS

    # Ann's event times run five hours ahead of Ben's. Ben's history is complete, so his
    # requests are decided exactly: served up to his cap, then refused by it, never as late.
    ann = [request(rules.campaign_id, t + 5 * HOUR + i * MINUTE, "ann") for i in range(2)]
    decided = await deployment.decided(await deployment.publish(*ann))
    assert [d.topic for d in decided] == ["served", "served"]
    ben = [request(rules.campaign_id, t + i * MINUTE, "ben") for i in range(3)]
    decided = await deployment.decided(await deployment.publish(*ben))
    assert [d.topic for d in decided] == ["served", "served", "denied"]
    assert decided[2].payload["detail"] == "2/1800s"

    # Cid is served, then the partition's event time passes the impression history and the
    # allowed lateness beyond it: his key ages out whole.
    (cid,) = await deployment.decided(
        await deployment.publish(request(rules.campaign_id, t + 6 * HOUR, "cid"))
    )
    assert cid.topic == "served"
    beyond = t + 6 * HOUR + DEFAULT_IMPRESSION_HISTORY_S * 1000 + ALLOWED_LATENESS_MS
    ahead = await deployment.decided(
        await deployment.publish(request(rules.campaign_id, beyond, "dee"))
    )
    assert ahead[0].topic == "served"
    aged = await deployment.state(rules.campaign_id, "cid")
    assert aged.cap is not None and aged.cap.times == []  # the key is gone

    # A request whose window held Cid's impression cannot be checked: refused as late.
    (again,) = await deployment.decided(
        await deployment.publish(request(rules.campaign_id, t + 6 * HOUR + MINUTE, "cid"))
    )
    assert (again.topic, again.reason, again.payload["detail"]) == (
        "denied",
        "frequency_cap",
        "late",
    )
    # One whose windows start after anything an aged-out key held is decided as usual.
    (later,) = await deployment.decided(
        await deployment.publish(request(rules.campaign_id, beyond - 30 * MINUTE, "cid"))
    )
    assert later.topic == "served"
