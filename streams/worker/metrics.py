"""Prometheus metrics of one worker, served on its web port at `/metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
