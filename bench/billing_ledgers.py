"""Billing the same `ad-served` topic into each ledger: charges per second and the billing
process's CPU per charge, SQLite (a file) against PostgreSQL (a throwaway local cluster,
Debian's packages; the network round trips are loopback ones).

Run: .venv/bin/python -m bench.billing_ledgers [--charges 20000] [--batch-size 1000]
Kafka from KAFKA_BOOTSTRAP_SERVERS, else as the other benchmarks get it (infra.provision).
Prints a table and writes bench/results/billing_ledgers.json, with its PNG beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench._plot import Panel, save_beside
from infra.postgres_server import PostgresServer
from infra.provision import provide_services
from streams.billing import consumer
from streams.billing.ledger import Ledger
from tests.billing.support import BASE_MS, Topic, served

RESULTS = Path(__file__).parent / "results" / "billing_ledgers.json"


async def publish(bootstrap: str, charges: int) -> Topic:
    """`charges` served events of one campaign (so one partition), in transactions of 1000,
    all visible to read_committed readers when this returns."""
    topic = Topic(bootstrap, f"bench-billing-{os.urandom(4).hex()}-")
    await topic.create()
    transactions = 0
    for start in range(0, charges, 1000):
        end = min(charges, start + 1000)
        await topic.publish([served(at_ms=BASE_MS + i * 1000) for i in range(start, end)])
        transactions += 1
    await topic.close()
    # A commit returns before its markers are written: until then the last transaction is
    # past the end offset that billing's --until-caught-up reads at start.
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await reader.start()
    try:
        partitions = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        while True:
            if sum((await reader.end_offsets(partitions)).values()) >= charges + transactions:
                break
            await asyncio.sleep(0.05)
    finally:
        await reader.stop()
    return topic


async def bill(topic: Topic, target: str, batch_size: int) -> dict[str, float]:
    with Ledger.open(target) as ledger:
        started, cpu = time.monotonic(), time.process_time()
        progress = await consumer.run(
            topic.bootstrap, topic.name, ledger, asyncio.Event(),
            until_caught_up=True, batch_size=batch_size,
        )  # fmt: skip
        wall, cpu = time.monotonic() - started, time.process_time() - cpu
    return {
        "charges": progress.charged,
        "seconds": wall,
        "charges_per_s": progress.charged / wall,
        "cpu_us_per_charge": cpu * 1e6 / progress.charged,
    }


def panels(report: dict[str, Any]) -> list[Panel]:
    """What the picture beside the report shows."""
    ledgers = report["ledgers"]
    return [
        Panel("charges/s", {name: row["charges_per_s"] for name, row in ledgers.items()}),
        Panel(
            "billing CPU us per charge",
            {name: row["cpu_us_per_charge"] for name, row in ledgers.items()},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--charges", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adstream-bench-") as root:
        postgres = PostgresServer(log_dir=Path(root) / "postgres")
        postgres.start()
        try:
            with provide_services() as services:
                topic = asyncio.run(publish(services.kafka_bootstrap_servers, args.charges))
                targets = {
                    "sqlite": str(Path(root) / "ledger.db"),
                    "postgresql": postgres.create_database("ledger"),
                }
                ledgers = {
                    name: asyncio.run(bill(topic, target, args.batch_size))
                    for name, target in targets.items()
                }
        finally:
            postgres.stop()
    report = {
        "command": "python -m bench.billing_ledgers "
        f"--charges {args.charges} --batch-size {args.batch_size}",
        "cpus": os.cpu_count(),
        "ledgers": ledgers,
    }
    print(f"{'ledger':<12}{'charges/s':>12}{'CPU us/charge':>16}")
    for name, row in ledgers.items():
        print(f"{name:<12}{row['charges_per_s']:>12,.0f}{row['cpu_us_per_charge']:>16,.0f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved to {RESULTS} and {save_beside(RESULTS, 'bench.billing_ledgers', panels(report))}")


if __name__ == "__main__":
    main()
