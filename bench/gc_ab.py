"""Python's garbage collector in adstream's worker, A/B: what `gc.freeze()` after start-up and a
higher youngest-generation threshold change (`streams.worker.collector`).

Each variant is `bench.pipeline`'s adstream contender with its settings in the environment,
run through both of that benchmark's phases (throughput over a backlog of `--requests`, then
latency at `--rate` requests/s for `--seconds`) on fresh topics. The variants run in turns,
`--rounds` times over and in a different order each round, so that a machine's drift
lands on all of them; each is reported against `default` (Python's collector untouched) from
the same round, as ratios of CPU us per decision (below 1: cheaper) and of p99 latency.

Run:  .venv/bin/python -m bench.gc_ab [--requests 8000] [--rate 300] [--seconds 10]
          [--rounds 2] [--gen0 50000] [--output bench/results/gc_ab.json]
Kafka and Redis as for `bench.pipeline`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from bench._harness import ProcessDied, run_and_save, source_version
from bench._plot import Panel
from bench.pipeline import (
    REPO,
    STOP_GRACE_S,
    Options,
    adstream_contender,
    run_contender,
    start_upstream,
)
from infra.provision import Services

RESULTS = REPO / "bench" / "results" / "gc_ab.json"
BASELINE = "default"


def variants(gen0: int) -> dict[str, dict[str, str]]:
    """Name -> the worker's collector settings."""
    return {
        BASELINE: {},
        "freeze": {"ADSTREAM_GC_FREEZE": "true"},
        # Names go into topic names: letters, digits, dots, dashes and underscores only.
        f"gen0_{gen0}": {"ADSTREAM_GC_GEN0": str(gen0)},
        f"freeze_gen0_{gen0}": {"ADSTREAM_GC_FREEZE": "true", "ADSTREAM_GC_GEN0": str(gen0)},
    }


def numbers(result: dict[str, Any]) -> dict[str, float | None]:
    return {
        "cpu_us_per_decision": result["throughput"]["cpu_us_per_decision"],
        "decisions_per_s": result["throughput"]["decisions_per_s"],
        "cpu_us_per_decision_at_rate": result["latency"].get("cpu_us_per_decision"),
        "p99_ms": result["latency"]["p99_ms"],
    }


async def run_all(
    options: Options, rounds: int, gen0: int, services: Services, work_dir: Path
) -> dict[str, Any]:
    upstream, vast_url = await start_upstream(work_dir)
    named = variants(gen0)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in named}
    try:
        for round_index in range(rounds):
            order = list(named)
            if round_index % 2:
                order.reverse()
            for name in order:
                contender = msgspec.structs.replace(
                    adstream_contender(named[name]), name=f"{name}-r{round_index}"
                )
                print(f"round {round_index + 1}: {name}", flush=True)
                try:
                    result = await run_contender(contender, options, services, vast_url, work_dir)
                except ProcessDied as exc:
                    print(f"{name}: FAILED: {exc}", flush=True)
                    result = {"error": str(exc)}
                runs[name].append(result)
    finally:
        await upstream.stop(STOP_GRACE_S)
    return {
        "config": {
            "requests": options.requests,
            "rate": options.rate,
            "seconds": options.seconds,
            "partitions": options.partitions,
            "rounds": rounds,
            "source": source_version(REPO),
        },
        "variants": {name: named[name] for name in named},
        "runs": {
            name: [numbers(r) if "error" not in r else r for r in rs] for name, rs in runs.items()
        },
        "ratios": ratios(runs),
    }


def ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Median over rounds of each variant's metric / the baseline's in the same round."""
    found: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        per_metric: dict[str, list[float]] = {}
        for result, base in zip(results, runs[BASELINE], strict=True):
            if "error" in result or "error" in base:
                continue
            mine, theirs = numbers(result), numbers(base)
            for metric, value in mine.items():
                other = theirs[metric]
                if value is not None and other:
                    per_metric.setdefault(metric, []).append(value / other)
        found[name] = {metric: statistics.median(values) for metric, values in per_metric.items()}
    return found


def print_table(report: dict[str, Any]) -> None:
    columns = ("cpu_us_per_decision", "decisions_per_s", "cpu_us_per_decision_at_rate", "p99_ms")
    print(f"\n{'variant / default':<24}" + "".join(f"{c[:22]:>24}" for c in columns))
    for name, values in report["ratios"].items():
        print(f"{name:<24}" + "".join(f"{values.get(c, float('nan')):>23.3f}x" for c in columns))


def panels(report: dict[str, Any]) -> list[Panel]:
    return [
        Panel(
            "CPU us per decision, variant / default (throughput phase)",
            {name: values.get("cpu_us_per_decision") for name, values in report["ratios"].items()},
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8_000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gen0", type=int, default=50_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    options = Options(
        args.requests, args.rate, args.seconds, args.partitions, ("adstream",), args.output
    )
    run_and_save(
        "gc_ab",
        lambda services, work_dir: run_all(options, args.rounds, args.gen0, services, work_dir),
        print_table,
        args.output,
        panels,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
