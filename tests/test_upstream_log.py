"""The worker's line on an upstream_error: its causes, a few per endpoint, whatever the URL."""

from __future__ import annotations

import logging
import uuid

import pytest

from models.ad import Hop
from streams.state.campaigns import CampaignRules
from streams.vast.result import ErrorReport, VastResult
from streams.worker.upstream_log import LINES_PER_ENDPOINT, explain_upstream_error
from tests.pipeline.harness import BASE_MS, campaign, request


def failed(url: str, *errors: ErrorReport) -> VastResult:
    return VastResult("error", 301, (), (Hop(url, 0, 1.0),), errors)


def test_causes_a_few_times_per_endpoint_then_the_count(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://ads-{uuid.uuid4().hex}.example/vast"
    config = campaign(url)
    rules = CampaignRules.from_campaign(config, 0)
    ad_request = request(config.campaign_id, BASE_MS)
    refused = failed(f"{url}?cb=1", ErrorReport(301, "Connect call failed", ()))
    with caplog.at_level(logging.WARNING, "streams.worker.upstream_log"):
        for _ in range(LINES_PER_ENDPOINT + 3):
            explain_upstream_error(rules, ad_request, refused)
        explain_upstream_error(rules, ad_request, VastResult("no_ad", 303, (), ()))
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [f"upstream_error 301 from {url}: 301 Connect call failed"] * LINES_PER_ENDPOINT
    assert caplog.records[0].request_id == ad_request.context.request_id  # type: ignore[attr-defined]


def test_a_url_that_does_not_parse_is_its_own_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    config = campaign("http://ads.example/vast")
    rules = CampaignRules.from_campaign(config, 0)
    bad = f"http://[{uuid.uuid4().hex}/vast"
    with caplog.at_level(logging.WARNING, "streams.worker.upstream_log"):
        explain_upstream_error(rules, request(config.campaign_id, BASE_MS), failed(bad))
    (line,) = [record.getMessage() for record in caplog.records]
    assert line == f"upstream_error 301 from {bad}: no cause reported"
