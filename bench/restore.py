"""How fast a worker restores its tables from their changelogs: Faust's per-record recovery
loop against the streamed restore (`streams.worker.recovery`, item 12), in the same run.

Run: .venv/bin/python -m bench.restore [--keys 100000] [--store rocksdb]

For each path, fresh topics get `--keys` users' `seen` and `frequency` records (two changelog
records per key, encoded as the worker encodes them, on the partitions the worker's would be),
then a worker with an empty data directory starts and restores them all. The restore time is
read from the worker's own log: from Faust's "Highwater for active changelog partitions" (the
restore begins) to its "Restore complete!". Prints a table and writes bench/results/restore.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from bench._harness import source_version
from infra.process import free_port
from infra.provision import Services, provide_services
from streams.admin import ensure_changelogs, ensure_topics
from streams.state.frequency import Impressions
from streams.topics import Topics, key_partition
from streams.worker.process import WorkerProcess
from streams.worker.tables import CapEntry, SeenRequest, changelog_partitions, frequency_key

RESULTS = Path(__file__).parent / "results" / "restore.json"
PARTITIONS = 4
BASE_MS = 1_767_225_600_000
PATHS = {
    "faust_per_record": ("-m", "bench._per_record_restore_worker"),
    "streamed": ("-m", "streams.cli", "worker"),
}


async def produce_changelogs(bootstrap: str, group_id: str, keys: int) -> int:
    """Each user's `seen` request id and `frequency` entry, as the worker writes them."""
    encode = msgspec.msgpack.Encoder().encode
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1024 * 1024, acks=1
    )
    await producer.start()
    sent = 0
    try:
        pending = []
        for i in range(keys):
            user = f"user-{i}"
            partition = key_partition(user, PARTITIONS)
            t = BASE_MS + i
            records = (
                ("seen", f"req-{uuid.UUID(int=i)}", SeenRequest(t, partition)),
                ("frequency", frequency_key("camp-1", user), CapEntry(Impressions([t]), partition)),
            )
            for table, key, value in records:
                pending.append(
                    await producer.send(
                        f"{group_id}-{table}-changelog",
                        value=encode(value),
                        key=key.encode(),
                        partition=partition,
                    )
                )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                sent += len(pending)
                pending.clear()
        await asyncio.gather(*pending)
        sent += len(pending)
    finally:
        await producer.stop()
    return sent


def log_time(line: str) -> float:
    stamp = json.loads(line)["ts"]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def restore_seconds(log: str) -> float:
    """From the start of the worker's last restore to its end, by its log."""
    lines = log.splitlines()
    ended = max(i for i, line in enumerate(lines) if "Restore complete!" in line)
    began = max(
        i
        for i, line in enumerate(lines[:ended])
        if "Highwater for active changelog partitions" in line
    )
    return log_time(lines[ended]) - log_time(lines[began])


async def measure(
    services: Services, path: str, keys: int, store: str, root: Path
) -> dict[str, Any]:
    bootstrap = services.kafka_bootstrap_servers
    name = f"rb{uuid.uuid4().hex[:8]}"
    group_id = f"{name}-{name}"
    topics = Topics.named(f"{name}-")
    await ensure_topics(bootstrap, topics, PARTITIONS)
    await ensure_changelogs(bootstrap, changelog_partitions(group_id, PARTITIONS))
    produced_at = time.perf_counter()
    records = await produce_changelogs(bootstrap, group_id, keys)
    produce_s = time.perf_counter() - produced_at
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": services.redis_url,
        "ADSTREAM_TOPIC_PREFIX": f"{name}-",
        "ADSTREAM_APP_ID": name,
        "ADSTREAM_PARTITIONS": str(PARTITIONS),
        "ADSTREAM_DATA_DIR": str(root / path),
        "ADSTREAM_STORE": store,
        "ADSTREAM_WEB_PORT": str(port),
        "ADSTREAM_WEB_BIND": "127.0.0.1",
        "ADSTREAM_LOG_LEVEL": "info",
    }
    worker = WorkerProcess(env, root / f"{path}.log", port, PATHS[path])
    started = time.perf_counter()
    worker.start()
    try:
        await worker.wait_ready(timeout_s=1800)
        ready_s = time.perf_counter() - started
    finally:
        worker.stop()
    seconds = restore_seconds(worker.log_path.read_text())
    return {
        "records": records,
        "produce_s": round(produce_s, 2),
        "restore_s": round(seconds, 2),
        "records_per_s": round(records / seconds),
        "start_to_ready_s": round(ready_s, 2),
    }


async def run(keys: int, store: str, root: Path) -> dict[str, Any]:
    with provide_services(root) as services:
        results = {path: await measure(services, path, keys, store, root) for path in PATHS}
    return {
        "source": source_version(Path(__file__).parent.parent),
        "keys": keys,
        "store": store,
        "partitions": PARTITIONS,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],
        "paths": results,
        "speedup": round(
            results["streamed"]["records_per_s"] / results["faust_per_record"]["records_per_s"], 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--store", choices=("rocksdb", "memory"), default="rocksdb")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="adstream-restore-"))
    report = asyncio.run(run(args.keys, args.store, root))
    print(f"{'path':<18} {'records':>9} {'restore s':>10} {'records/s':>10} {'ready s':>8}")
    for path, result in report["paths"].items():
        print(
            f"{path:<18} {result['records']:>9} {result['restore_s']:>10} "
            f"{result['records_per_s']:>10} {result['start_to_ready_s']:>8}"
        )
    print(f"streamed / per-record: {report['speedup']}x")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved to {args.output}; logs in {root}")


if __name__ == "__main__":
    main()
