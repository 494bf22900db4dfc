"""adstream's exactly-once latency against its commit interval and its fetch wait.

Decisions become visible to read_committed readers only when their Kafka transaction commits,
every `ADSTREAM_COMMIT_INTERVAL_S`; a consumer fetch with too little data waits up to
`ADSTREAM_FETCH_WAIT_MS` at the broker (on `ad-requests`, and on `budget-leases` for a lease's
refill). Shorter means lower latency and more CPU per decision (more
transactions, more fetches). This runs only adstream's latency phase of `bench.pipeline`
(same harness, campaigns, upstream and request source) for each combination of the settings:

- a fresh worker on fresh topics with the setting in its environment, waited for on its
  readiness route (`/adstream/ready/`);
- a warm-up of `--warmup` requests, each campaign at least once, all decided, so that the
  campaigns are in force and the connections open;
- `--idle` seconds without requests: the CPU the worker burns just polling and committing
  (cores), the floor under its CPU per decision at any load;
- for each of `--rates`, lowest first, that many requests/s for `--seconds` and until all are
  decided: end-to-end latency p50/p99 (publish to visible in a read_committed consumer), the
  CPU per decision of the worker process at that load, and the rate it achieved (below the
  offered rate the worker fell behind, and the latency is mostly queueing). A rate the worker
  sustains shows what the settings cost; one it does not, mostly its throughput.

Run:  .venv/bin/python -m bench.commit_sweep [--commit-intervals 0.02,0.05,0.1,0.25]
          [--fetch-waits 5,10,50] [--rates 1000] [--seconds 10] [--warmup 200] [--idle 5]
          [--partitions 4] [--output bench/results/commit_sweep.json]
Kafka and Redis as for `bench.pipeline`. Prints a table and writes the JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from bench._harness import ProcessDied, run_and_save, source_version, wait_ready
from bench._plot import Panel
from bench.pipeline import (
    CAMPAIGN_IDS,
    STARTUP_TIMEOUT_S,
    STOP_GRACE_S,
    Deployment,
    adstream_contender,
    start_upstream,
    wait_for_decisions,
)
from infra.process import tail
from infra.provision import Services

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "commit_sweep.json"
COMMIT_INTERVAL_ENV = "ADSTREAM_COMMIT_INTERVAL_S"
FETCH_WAIT_ENV = "ADSTREAM_FETCH_WAIT_MS"


class Options(msgspec.Struct, frozen=True):
    commit_intervals: tuple[float, ...]
    fetch_waits: tuple[int, ...]
    rates: tuple[float, ...]
    seconds: float
    warmup: int
    idle: float
    partitions: int
    output: Path


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(item) for item in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(","))


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--commit-intervals", type=_floats, default=(0.02, 0.05, 0.1, 0.25), help="seconds"
    )
    parser.add_argument("--fetch-waits", type=_ints, default=(5, 10, 50), help="milliseconds")
    parser.add_argument(
        "--rates", type=_floats, default=(1_000.0,), help="requests/s, e.g. 200,1000"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured phase length")
    parser.add_argument("--warmup", type=int, default=200, help="requests decided before measuring")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds without requests")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.warmup < len(CAMPAIGN_IDS):
        parser.error(f"--warmup must cover every campaign: at least {len(CAMPAIGN_IDS)}")
    return Options(
        args.commit_intervals,
        args.fetch_waits,
        tuple(sorted(args.rates)),
        args.seconds,
        args.warmup,
        args.idle,
        args.partitions,
        args.output,
    )


def settings_env(commit_interval_s: float, fetch_wait_ms: int) -> dict[str, str]:
    return {COMMIT_INTERVAL_ENV: f"{commit_interval_s:g}", FETCH_WAIT_ENV: str(fetch_wait_ms)}


async def run_point(
    commit_interval_s: float,
    fetch_wait_ms: int,
    options: Options,
    services: Services,
    vast_url: str,
    work_dir: Path,
) -> list[dict[str, Any]]:
    """One worker with these settings: ready, warmed up, then a latency phase per rate."""
    contender = adstream_contender(settings_env(commit_interval_s, fetch_wait_ms))
    label = f"adstream-c{commit_interval_s:g}-f{fetch_wait_ms}"
    assert contender.ready_url is not None
    setting: dict[str, Any] = {
        "commit_interval_s": commit_interval_s,
        "fetch_wait_ms": fetch_wait_ms,
    }
    points = []
    async with Deployment(contender, options.partitions, services, vast_url) as deployment:
        setting["topic_prefix"] = deployment.prefix
        process = deployment.start(work_dir, label)
        try:
            setting["ready_s"] = await wait_ready(contender.ready_url, process, STARTUP_TIMEOUT_S)
            warmup = await deployment.source.publish(options.warmup)
            deployment.reader.expect(frozenset(warmup))
            await wait_for_decisions(deployment.reader, process, len(warmup), STARTUP_TIMEOUT_S)
            if deployment.reader.matched < len(warmup):
                missing = sorted(set(warmup) - set(deployment.reader.seen))
                raise ProcessDied(
                    f"{label}: {len(missing)} of {len(warmup)} warm-up requests not decided"
                    f" ({', '.join(missing[:5])}...); log {process.log}:\n{tail(process.log, 60)}"
                )
            setting["warmup_outcomes"] = deployment.reader.outcomes(warmup)
            if options.idle > 0:
                before = process.cpu_s()
                await asyncio.sleep(options.idle)
                setting["idle_cpu_cores"] = (process.cpu_s() - before) / options.idle
            for rate in options.rates:
                print(f"  {rate:g} requests/s for {options.seconds:g} s", flush=True)
                latency = await deployment.latency_phase(process, rate, options.seconds)
                points.append({**setting, "rate": rate, **latency})
        finally:
            stopped_by = await process.stop(STOP_GRACE_S)
            for point in points:
                point["stopped_by"] = stopped_by
    return points


async def run_all(options: Options, services: Services, work_dir: Path) -> dict[str, Any]:
    upstream, vast_url = await start_upstream(work_dir)
    report: dict[str, Any] = {
        "config": {
            "rates": options.rates,
            "seconds": options.seconds,
            "warmup": options.warmup,
            "idle": options.idle,
            "partitions": options.partitions,
            "cpus": os.cpu_count(),
            "kafka": services.kafka_source,
            "source": source_version(REPO),
        },
        "points": [],
    }
    try:
        for commit_interval_s in options.commit_intervals:
            for fetch_wait_ms in options.fetch_waits:
                print(
                    f"commit interval {commit_interval_s:g} s, fetch wait {fetch_wait_ms} ms",
                    flush=True,
                )
                try:
                    points = await run_point(
                        commit_interval_s, fetch_wait_ms, options, services, vast_url, work_dir
                    )
                except ProcessDied as exc:
                    print(f"  FAILED: {exc}", flush=True)
                    points = [
                        {
                            "commit_interval_s": commit_interval_s,
                            "fetch_wait_ms": fetch_wait_ms,
                            "error": str(exc),
                        }
                    ]
                report["points"].extend(points)
    finally:
        await upstream.stop(STOP_GRACE_S)
    return report


def _cell(point: dict[str, Any], name: str, digits: int) -> str:
    value = point.get(name)
    return f"{value:>12,.{digits}f}" if isinstance(value, float) else f"{'-':>12}"


def print_table(report: dict[str, Any]) -> None:
    columns = ["commit s", "fetch ms", "rate/s", "p50 ms", "p99 ms", "max ms", "CPU us/dec"]
    columns += ["decided/s", "idle cores"]
    print("\n" + "".join(f"{column:>12}" for column in columns) + "   missing/dups")
    for point in sorted(report["points"], key=lambda p: p.get("rate", 0)):
        head = f"{point['commit_interval_s']:>12g}{point['fetch_wait_ms']:>12}"
        head += f"{point['rate']:>12g}" if "rate" in point else f"{'-':>12}"
        if "error" in point:
            print(head + "   failed (see above)")
            continue
        print(
            head
            + _cell(point, "p50_ms", 1)
            + _cell(point, "p99_ms", 1)
            + _cell(point, "max_ms", 1)
            + _cell(point, "cpu_us_per_decision", 0)
            + _cell(point, "decided_per_s", 0)
            + _cell(point, "idle_cpu_cores", 2)
            + f"   {point['missing']}/{point['duplicates']}"
        )


def panels(report: dict[str, Any]) -> list[Panel]:
    """What the picture beside the report shows: each point's latency and cost."""
    points = sorted(
        (p for p in report["points"] if "error" not in p),
        key=lambda p: (p["rate"], p["commit_interval_s"], p["fetch_wait_ms"]),
    )

    def label(point: dict[str, Any]) -> str:
        commit, fetch = point["commit_interval_s"], point["fetch_wait_ms"]
        return f"{point['rate']:g}/s, commit {commit:g} s, fetch {fetch} ms"

    return [
        Panel(title, {label(point): point[key] for point in points})
        for title, key in (
            ("p50 latency, ms", "p50_ms"),
            ("p99 latency, ms", "p99_ms"),
            ("CPU us per decision", "cpu_us_per_decision"),
            ("idle CPU, cores", "idle_cpu_cores"),
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; 0 when every point decided every request exactly once."""
    options = parse_args(argv)
    report = run_and_save(
        "commit-sweep",
        lambda services, work_dir: run_all(options, services, work_dir),
        print_table,
        options.output,
        panels,
    )
    exact = all(
        "error" not in point and point["missing"] == 0 and point["duplicates"] == 0
        for point in report["points"]
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
