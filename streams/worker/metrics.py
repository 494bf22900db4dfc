"""Prometheus metrics of one worker, served on its web port at `/metrics` (docs/operations.md).

Counters and histograms are observed where things happen; gauges of state (lag, spend,
breakers) are set from a `WorkerStatus` when scraped. Labels stay bounded: campaigns come from
configuration, partitions from the topics, endpoints are capped, and no user id is a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from streams.worker.status import MAX_REPORTED_ENDPOINTS, WorkerStatus

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Event time to decision adds the time in Kafka: a backlog shows as seconds to minutes.
_EVENT_LATENCY_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    *(10.0, 30.0, 60.0, 300.0, 900.0),
)


class Metrics:
    """One registry per worker, so that tests can run several in one process."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.decisions = Counter(
            "adstream_decisions",
            "Decisions emitted, by outcome (served, denied) and denial reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.decision_latency = Histogram(
            "adstream_decision_latency_seconds",
            "From the start of the batch holding a request to its decision.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.event_latency = Histogram(
            "adstream_event_to_decision_seconds",
            "From the request's event time (its context timestamp) to its decision being sent: "
            "includes the time it waited in Kafka and the edge's clock offset.",
            buckets=_EVENT_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "adstream_upstream_latency_seconds",
            "Whole VAST chain resolution time.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "adstream_upstream_errors",
            "VAST resolutions that gave no ad, by IAB error code.",
            ["code"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "adstream_dead_letters",
            "Messages sent to the DLQ, by reason.",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "adstream_duplicate_requests",
            "Requests dropped because their request_id was seen before.",
            registry=registry,
        )
        self.table_keys = Gauge(
            "adstream_table_keys",
            "Keys held in each table on this worker.",
            ["table"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "adstream_redis_errors",
            "Failed lookaside writes (decisions are unaffected).",
            registry=registry,
        )
        ProcessCollector(registry=registry)
        self.consumer_lag = Gauge(
            "adstream_consumer_lag",
            "Records in each assigned source partition not fetched yet (end - position).",
            ["topic", "partition"],
            registry=registry,
        )
        self.committed_offset = Gauge(
            "adstream_committed_offset",
            "The offset the worker committed last in each assigned source partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.campaign_spend = Gauge(
            "adstream_campaign_spend_micros",
            "Spend of each campaign by the partitions this worker owns (their leases), in "
            "micros of its currency: lifetime, and on the newest UTC day of event time "
            "(window=day). A campaign's spend is the sum over the workers.",
            ["campaign", "currency", "window"],
            registry=registry,
        )
        self.campaign_budget = Gauge(
            "adstream_campaign_budget_micros",
            "The budget of each campaign in force (absent when unlimited), in micros.",
            ["campaign", "currency", "window"],
            registry=registry,
        )
        self.breaker_open = Gauge(
            "adstream_upstream_breaker_open",
            f"Upstream endpoints with timeouts (at most {MAX_REPORTED_ENDPOINTS}, open first): "
            "1 when the breaker is open, 0 while it still lets requests through.",
            ["endpoint"],
            registry=registry,
        )
        self.breaker_timeouts = Gauge(
            "adstream_upstream_breaker_timeouts",
            "Timeouts in a row of the endpoints in adstream_upstream_breaker_open.",
            ["endpoint"],
            registry=registry,
        )
        self.breakers_open = Gauge(
            "adstream_upstream_breakers_open",
            "Upstream endpoints whose breaker is open, all of them.",
            registry=registry,
        )

    def decision_totals(self) -> dict[str, int]:
        """Decisions so far by reason, `served` for the served ones."""
        return {
            sample.labels["reason"] or sample.labels["outcome"]: int(sample.value)
            for family in self.decisions.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    def show(self, status: WorkerStatus) -> None:
        """Set the state gauges from `status`; series of what it no longer holds go."""
        for gauge in (
            self.consumer_lag,
            self.committed_offset,
            self.campaign_spend,
            self.campaign_budget,
            self.breaker_open,
            self.breaker_timeouts,
        ):
            gauge.clear()
        for part in status.partitions:
            labels = {"topic": part.topic, "partition": str(part.partition)}
            if part.lag is not None:
                self.consumer_lag.labels(**labels).set(part.lag)
            if part.committed is not None:
                self.committed_offset.labels(**labels).set(part.committed)
        for campaign in status.campaigns:
            for window, spent, budget in (
                ("lifetime", campaign.spent, campaign.budget),
                ("day", campaign.spent_on_day, campaign.daily_budget),
            ):
                labels = {
                    "campaign": campaign.campaign_id,
                    "currency": campaign.currency,
                    "window": window,
                }
                self.campaign_spend.labels(**labels).set(spent)
                if budget is not None:
                    self.campaign_budget.labels(**labels).set(budget)
        for endpoint in status.endpoints:
            self.breaker_open.labels(endpoint=endpoint.endpoint).set(int(endpoint.open))
            self.breaker_timeouts.labels(endpoint=endpoint.endpoint).set(endpoint.timeouts)
        self.breakers_open.set(status.open_endpoints)
