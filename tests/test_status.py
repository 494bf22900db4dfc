"""What a worker reports about itself (`streams.worker.status`) and how `/metrics` shows it:
pure, on hand-made states."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.state.campaigns import CampaignRules
from streams.state.spend import Spend, charge
from streams.topics import key_partition
from streams.vast.breaker import EndpointState
from streams.worker.metrics import Metrics
from streams.worker.status import (
    CampaignStatus,
    DecisionRates,
    PartitionStatus,
    WorkerStatus,
    campaign_status,
)
from streams.worker.status_view import Money, campaign_view

DAY_MS = 86_400_000


def rules(campaign_id: str = "camp-1", lifetime: int | None = 10_000) -> CampaignRules:
    return CampaignRules(
        campaign_id=campaign_id,
        version=7,
        active=True,
        vast_url="http://ads.example/vast",
        currency="EUR",
        cost_micros=2_500,
        lifetime_micros=lifetime,
        daily_micros=5_000,
        caps=(),
        anonymous_allowed=False,
    )


def test_a_campaign_reports_its_lifetime_and_its_newest_days_spend() -> None:
    spent = Spend()
    for at_ms in (3 * DAY_MS, 4 * DAY_MS + 1, 4 * DAY_MS + 2):
        charge(spent, 2_500, at_ms)
    status = campaign_status(rules(), spent)
    assert (status.spent, status.budget, status.remaining) == (7_500, 10_000, 2_500)
    assert (status.day, status.spent_on_day, status.daily_budget) == (4, 5_000, 5_000)
    assert status.remaining_on_day == 0
    assert (status.version, status.currency, status.cost) == (7, "EUR", 2_500)


def test_an_unlimited_campaign_without_spend_has_no_budget_left_to_report() -> None:
    status = campaign_status(rules(lifetime=None), Spend())
    assert (status.spent, status.remaining, status.day, status.spent_on_day) == (0, None, None, 0)


def test_a_partitions_lag_is_known_once_both_ends_are() -> None:
    assert PartitionStatus("t", 0, position=None, end=5, committed=None).lag is None
    assert PartitionStatus("t", 0, position=3, end=None, committed=None).lag is None
    assert PartitionStatus("t", 0, position=3, end=8, committed=3).lag == 5
    assert PartitionStatus("t", 0, position=9, end=8, committed=3).lag == 0


@given(st.text(min_size=1, max_size=40), st.integers(1, 64))
def test_campaigns_live_where_kafkas_producers_put_their_records(
    campaign_id: str, partitions: int
) -> None:
    expected = DefaultPartitioner()(campaign_id.encode(), list(range(partitions)), [])
    assert key_partition(campaign_id, partitions) == expected


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def status(
    *campaigns: CampaignStatus, endpoints: list[EndpointState] | None = None
) -> WorkerStatus:
    return WorkerStatus(
        partitions=[PartitionStatus("ad-requests", 1, position=10, end=14, committed=9)],
        campaigns=list(campaigns),
        endpoints=endpoints or [],
        open_endpoints=sum(1 for endpoint in endpoints or [] if endpoint.open),
    )


def test_metrics_show_a_status_and_drop_what_it_no_longer_holds() -> None:
    metrics = Metrics()
    spent = Spend()
    charge(spent, 2_500, DAY_MS)
    kept, moved = campaign_status(rules("kept"), spent), campaign_status(rules("moved"), spent)
    metrics.show(status(kept, moved, endpoints=[EndpointState("http://a.example/v", True, 5)]))
    shown = samples(metrics)
    lifetime = (("campaign", "kept"), ("currency", "EUR"), ("window", "lifetime"))
    day = (("campaign", "kept"), ("currency", "EUR"), ("window", "day"))
    assert shown["adstream_campaign_spend_micros", lifetime] == 2_500
    assert shown["adstream_campaign_budget_micros", lifetime] == 10_000
    assert shown["adstream_campaign_budget_micros", day] == 5_000
    # What is left is the budget less every worker's spend: a query over all of them
    # (ops/prometheus/alerts.yml), not one worker's number.
    assert not any(name == "adstream_campaign_remaining_micros" for name, _ in shown)
    partition = (("partition", "1"), ("topic", "ad-requests"))
    assert shown["adstream_consumer_lag", partition] == 4
    assert shown["adstream_committed_offset", partition] == 9
    endpoint = (("endpoint", "http://a.example/v"),)
    assert shown["adstream_upstream_breaker_open", endpoint] == 1
    assert shown["adstream_upstream_breaker_timeouts", endpoint] == 5
    assert shown["adstream_upstream_breakers_open", ()] == 1
    assert any(name.startswith("process_") for name, _ in shown)

    metrics.show(status(kept))
    after = samples(metrics)
    assert not [key for key in after if ("campaign", "moved") in key[1]]
    assert not [key for key in after if key[0].startswith("adstream_upstream_breaker_open")]
    assert after["adstream_upstream_breakers_open", ()] == 0
    assert after["adstream_campaign_spend_micros", lifetime] == 2_500


def test_decision_rates_count_from_the_start_and_over_the_last_window() -> None:
    rates = DecisionRates(started=100.0, window_s=10.0)
    assert rates.per_second() == {}
    rates.observe(102.0, {"served": 4, "frequency_cap": 2})  # before the first regular sample
    assert rates.per_second() == {"served": 2.0, "frequency_cap": 1.0}
    for at in range(103, 120):
        rates.observe(float(at), {"served": 4 + 3 * (at - 102), "frequency_cap": 2})
    assert rates.per_second() == {"served": 3.0, "frequency_cap": 0.0}


def test_the_status_json_gives_money_as_decimal_strings_with_their_currency() -> None:
    spent = Spend()
    charge(spent, 2_500, 20_000 * DAY_MS)
    view = campaign_view(campaign_status(rules(), spent))
    assert view.spent == Money("0.0025", "EUR") and view.remaining == Money("0.0075", "EUR")
    assert view.day == "2024-10-04" and view.spent_on_day == Money("0.0025", "EUR")
    unlimited = campaign_view(campaign_status(rules(lifetime=None), Spend()))
    assert (unlimited.budget, unlimited.remaining, unlimited.day) == (None, None, None)
    assert unlimited.spent == Money("0.00", "EUR")
