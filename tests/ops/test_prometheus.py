"""`ops/` against a real Prometheus (Debian's package): the alert rules pass `promtool`'s
checks and unit tests, and every query of the Grafana dashboard returns data from a
Prometheus scraping a real worker after real traffic."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from infra.prometheus import PrometheusServer, promtool
from infra.provision import Services
from tests.pipeline import observed
from tests.pipeline.harness import Deployment
from tests.upstream import VastServer

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus"
DASHBOARD = OPS / "grafana" / "adstream.json"
JOB = "adstream-worker"


def test_the_alert_rules_and_the_scrape_example_pass_promtool(tmp_path: Path) -> None:
    assert "SUCCESS: 7 rules found" in promtool(["check", "rules", "alerts.yml"], tmp_path, RULES)
    assert "SUCCESS" in promtool(["test", "rules", "alerts_test.yml"], tmp_path, RULES)
    promtool(["check", "config", "prometheus.yml"], tmp_path, RULES)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every target, with the dashboard's `$job` chosen."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$job", JOB))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def test_the_dashboard_has_a_query_for_each_thing_operators_watch() -> None:
    queries = " ".join(query for _, query in dashboard_queries())
    for metric in (
        "adstream_decisions_total",
        "adstream_event_to_decision_seconds_bucket",
        "adstream_consumer_lag",
        "adstream_campaign_spend_micros",
        "adstream_campaign_budget_micros",
        "adstream_upstream_errors_total",
        "adstream_upstream_breaker_open",
    ):
        assert metric in queries


@pytest.fixture(scope="module")
async def deployment(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    async with observed.deployed(services, tmp_path_factory.mktemp("scraped")) as deployment:
        yield deployment


@pytest.fixture
def prometheus(deployment: Deployment, tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus scraping the deployment's worker every second."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "static_configs": [
                            {"targets": [f"127.0.0.1:{deployment.alive_worker().web_port}"]}
                        ],
                    }
                ],
            }
        )
    )
    server = PrometheusServer(config, tmp_path / "data", tmp_path / "logs")
    server.start()
    yield server
    server.stop()


async def answered(client: httpx.AsyncClient, query: str) -> list[float]:
    response = await client.get("/api/v1/query", params={"query": query})
    body = response.json()
    assert body["status"] == "success", (query, body)
    return [float(item["value"][1]) for item in body["data"]["result"]]


async def test_every_dashboard_query_returns_data_from_a_scraped_worker(
    deployment: Deployment, vast_server: VastServer, prometheus: PrometheusServer
) -> None:
    async with httpx.AsyncClient(base_url=prometheus.url, timeout=5.0) as client:
        # Before any traffic: a rate counts what changed between two scrapes.
        deadline = time.monotonic() + 30
        while await answered(client, f'up{{job="{JOB}"}}') != [1.0]:
            assert time.monotonic() < deadline, "Prometheus never scraped the worker"
            await asyncio.sleep(0.2)
    await observed.make_traffic(deployment, vast_server)
    queries = dashboard_queries()
    pending = {query: title for title, query in queries}
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=prometheus.url, timeout=5.0) as client:
        # Until each has a number: rates need two scrapes of a series.
        while pending and time.monotonic() < deadline:
            for query in list(pending):
                if any(math.isfinite(value) for value in await answered(client, query)):
                    del pending[query]
            await asyncio.sleep(0.5)
        up = await answered(client, f'up{{job="{JOB}"}}')
    assert up == [1.0]
    assert not pending, f"dashboard queries without data: {pending}"
    assert len(queries) >= 10
