"""Prometheus metrics of a billing run, served with `adstream billing --metrics-port`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, start_http_server

from streams.billing.consumer import Progress


class BillingMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.lag = Gauge(
            "adstream_billing_lag_records",
            "Committed ad-served records billing has not read yet (absent until known).",
            registry=registry,
        )
        self.charges = Gauge(
            "adstream_billing_charges",
            "Charges in the ledger, from earlier runs included.",
            registry=registry,
        )
        self.duplicates = Gauge(
            "adstream_billing_duplicates",
            "Served events of this run not charged again (request_id already charged).",
            registry=registry,
        )
        self.rejected = Gauge(
            "adstream_billing_rejected",
            "Records of this run kept as rejected (not a valid AdServed).",
            registry=registry,
        )

    def serve(self, port: int, bind: str) -> None:
        """Serve `/metrics` from a thread of this process until it exits."""
        start_http_server(port, addr=bind, registry=self.registry)

    def show(self, progress: Progress) -> None:
        if progress.lag is not None:
            self.lag.set(progress.lag)
        self.charges.set(progress.charges)
        self.duplicates.set(progress.duplicates)
        self.rejected.set(progress.rejected)
