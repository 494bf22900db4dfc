"""The worker's status page and its JSON, on a real worker: money as decimal strings with
their currency, and the page, rendered by a real headless Chromium, shows numbers that move
as decisions are made, without a console error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import lxml.html

from infra.chromium import render
from tests.pipeline.harness import Deployment, campaign, request


async def status(deployment: Deployment) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(deployment.alive_worker().url("/adstream/status.json"))
    response.raise_for_status()
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


async def serve(deployment: Deployment, campaign_id: str, users: range) -> None:
    at_ms = int(time.time() * 1000)
    decided = await deployment.decided(
        await deployment.publish(*(request(campaign_id, at_ms + n, f"status-{n}") for n in users))
    )
    assert {decision.topic for decision in decided} == {"served"}


async def test_the_json_reports_spend_as_money_partitions_and_decision_rates(
    deployment: Deployment, ad_url: str
) -> None:
    rules = campaign(ad_url, lifetime="0.01", daily="1.00")
    await deployment.load(rules)
    await serve(deployment, rules.campaign_id, range(3))

    deadline = time.monotonic() + 20
    while (body := await status(deployment))["decisions_per_second"].get("served", 0) <= 0:
        assert time.monotonic() < deadline, (body["decisions_per_second"], body["decisions"])
        await asyncio.sleep(0.3)
    (shown,) = [c for c in body["campaigns"] if c["campaign_id"] == rules.campaign_id]
    usd = "USD"
    assert shown["spent"] == {"amount": "0.0075", "currency": usd}
    assert shown["budget"] == {"amount": "0.01", "currency": usd}
    assert shown["remaining"] == {"amount": "0.0025", "currency": usd}
    assert shown["cost"] == {"amount": "0.0025", "currency": usd}
    assert shown["daily_budget"] == {"amount": "1.00", "currency": usd}
    assert shown["spent_on_day"] == shown["spent"]
    assert shown["day"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert shown["version"] >= 0 and shown["active"] is True
    assert body["decisions"]["served"] >= 3
    topics = deployment.topics
    assert {(p["topic"], p["partition"]) for p in body["partitions"]} == {
        (topic, partition)
        for topic in (topics.requests, topics.leases, topics.campaigns)
        for partition in range(deployment.partitions)
    }
    assert body["endpoints"] == [] and body["open_endpoints"] == 0


def rendered(deployment: Deployment, work_dir: Path) -> lxml.html.HtmlElement:
    page = render(deployment.alive_worker().url("/adstream/status/"), work_dir)
    assert page.console == []
    document = lxml.html.fromstring(page.dom)
    assert document.xpath('string(//*[@id="errors"])') == ""  # what the page's scripts threw
    assert document.xpath('string(//*[@id="problem"])') == ""  # status.json answered
    return document


async def test_the_page_in_chromium_shows_live_numbers(
    deployment: Deployment, ad_url: str, tmp_path: Path
) -> None:
    filled = campaign(ad_url, lifetime="5.00")
    await deployment.load(filled)
    await serve(deployment, filled.campaign_id, range(2))

    before = await asyncio.to_thread(rendered, deployment, tmp_path / "before")
    (row,) = before.xpath(f'//tbody[@id="campaigns"]/tr[@data-campaign="{filled.campaign_id}"]')
    assert row.get("data-spent") == "0.005"
    assert "0.005 USD" in row.text_content() and "5.00 USD" in row.text_content()
    assert row.xpath(".//*[local-name()='svg']//*[local-name()='polyline']")
    served = before.xpath('//tbody[@id="decisions"]/tr[@data-reason="served"]/td')
    partitions = before.xpath('//tbody[@id="partitions"]/tr')
    assert len(partitions) == 3 * deployment.partitions

    await serve(deployment, filled.campaign_id, range(2, 5))
    after = await asyncio.to_thread(rendered, deployment, tmp_path / "after")
    (row,) = after.xpath(f'//tbody[@id="campaigns"]/tr[@data-campaign="{filled.campaign_id}"]')
    assert row.get("data-spent") == "0.0125"
    served_after = after.xpath('//tbody[@id="decisions"]/tr[@data-reason="served"]/td')
    assert int(served_after[2].text_content()) == int(served[2].text_content()) + 3
