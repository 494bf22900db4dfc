"""How long the local infrastructure takes to become ready.

Run: .venv/bin/python -m bench.infra_startup [--runs 3] [--skip-cold]
Cold = an empty jar cache and an empty Maven repository (the jars come from Maven Central);
warm = jars cached. Prints a table and writes bench/results/infra_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._plot import Panel, save_beside
from infra.broker import KAFKA_VERSION, KafkaBroker
from infra.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "infra_startup.json"


def timed_start(make: Callable[[Path], KafkaBroker | RedisServer]) -> float:
    with tempfile.TemporaryDirectory(prefix="adstream-bench-") as root:
        service = make(Path(root))
        started = time.perf_counter()
        service.start()
        elapsed = time.perf_counter() - started
        service.stop()
    return elapsed


def kafka(root: Path) -> KafkaBroker:
    return KafkaBroker(data_dir=root / "data", log_dir=root / "logs")


def redis(root: Path) -> RedisServer:
    return RedisServer(data_dir=root / "data", log_dir=root / "logs")


def cold_kafka_start() -> float:
    """A broker start that first downloads every jar into empty caches."""
    with tempfile.TemporaryDirectory(prefix="adstream-cold-") as cache:
        saved = {name: os.environ.get(name) for name in ("ADSTREAM_CACHE_DIR", "MAVEN_OPTS")}
        os.environ["ADSTREAM_CACHE_DIR"] = cache
        os.environ["MAVEN_OPTS"] = f"-Dmaven.repo.local={cache}/m2"
        try:
            return timed_start(kafka)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()

    results: dict[str, float | int | str] = {"kafka_version": KAFKA_VERSION, "runs": args.runs}
    if not args.skip_cold:
        results["kafka_cold_s"] = cold_kafka_start()
    results["kafka_warm_median_s"] = statistics.median(timed_start(kafka) for _ in range(args.runs))
    results["redis_median_s"] = statistics.median(timed_start(redis) for _ in range(args.runs))

    for name, value in results.items():
        shown = f"{value:8.2f}" if isinstance(value, float) else f"{value!s:>8}"
        print(f"{name:<22}{shown}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved to {RESULTS} and {save_beside(RESULTS, 'bench.infra_startup', panels(results))}")


def panels(results: dict[str, float | int | str]) -> list[Panel]:
    """What the picture beside the report shows: the start-up times."""
    seconds = {
        name: value
        for name, value in results.items()
        if name.endswith("_s") and isinstance(value, float)
    }
    return [Panel(f"seconds until ready (Kafka {results['kafka_version']})", seconds)]


if __name__ == "__main__":
    main()
