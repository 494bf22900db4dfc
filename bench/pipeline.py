"""The decision pipeline, end to end: the aiokafka limit, the Faust peer and adstream's worker.

Measured for each contender, in one run and on one broker, with a one-hop VAST upstream (an
aiohttp server in its own process serving a ~2 KB InLine document on loopback):
- decisions/s of one worker process: N requests (--requests) are published first, then the
  contender starts on fresh topics; the rate is taken over the steady window, from the first
  commit that made decisions visible to the last but one (`_harness.steady_window` says why);
- CPU us per decision: user + system time of the contender's processes (/proc) over that window;
- end-to-end latency p50/p99 at a fixed offered load (--rate requests/s for --seconds): from the
  moment a request is sent to the moment a read_committed consumer reads its decision, plus the
  CPU per decision at that load.
Every request must get exactly one decision: missing and duplicate decisions are counted, and
what each decision was (served, or denied and why) is reported per phase.

Contenders (see `contenders()`): (a) `limit`, a bare transactional aiokafka + aiohttp loop
(bench/_limit.py); (b) `peer`, one Faust agent per stage with Faust's defaults and httpx
(bench/_peer.py); (c) `adstream`, `python -m streams.cli worker` (see `contenders()` for its
settings; it is waited for on its readiness route).

adstream reads its campaigns from the `campaigns` topic: each has a frequency cap and a budget
that never bind at the benchmark's sizes, so every request costs what it costs in production
(checks of the cap and both budgets, writes of both tables once served) and is served, so the
three contenders make the same one GET per request. `bench.commit_sweep` measures adstream's
latency against its commit interval and fetch wait.

Run:  .venv/bin/python -m bench.pipeline [--requests 20000] [--rate 1000] [--seconds 10]
          [--partitions 4] [--only a,b,c] [--output bench/results/pipeline.json]
          [--profile PATH_TO_PY_SPY]
`--profile` samples each contender's throughput phase (from its first visible decision to its
last) with py-spy and reports where the CPU time goes by library (bench/_profile.py); sampling
slows the contender a little, so profile in a run of its own, e.g. `--only c --profile
/path/to/py-spy --output bench/results/pipeline_profile.json`.
Kafka and Redis come from KAFKA_BOOTSTRAP_SERVERS / REDIS_URL, or are started locally
(infra.provision). Prints a table and writes bench/results/pipeline.json; contender logs stay in
a temporary folder whose path is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from bench._contract import (
    CAMPAIGNS,
    DENIED,
    LEASES,
    PEER_BY_CAMPAIGN,
    PREFIX_ENV,
    REQUESTS,
    SERVED,
    VAST_URL_ENV,
)
from bench._harness import (
    DecisionReader,
    MeasuredProcess,
    ProcessDied,
    RequestSource,
    create_topics,
    percentile,
    run_and_save,
    source_version,
    steady_window,
    wait_ready,
)
from bench._plot import Panel
from bench._profile import PySpy, print_summary
from bench._upstream import VAST_PATH
from infra.process import free_port, port_open
from infra.provision import Services
from models.codec import encode
from models.events import SCHEMA_VERSION, Budget, Campaign, FrequencyCap

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "pipeline.json"
VAST_SAMPLE = REPO / "tests" / "data" / "vast-client-js-samples" / "inline-linear.xml"
READY_PATH = "/adstream/ready/"

CAMPAIGN_IDS = tuple(f"campaign-{i}" for i in range(8))
USERS = 10_000
# Rules that never bind here: 10,000 users x 8 campaigns see a few requests per pair, and a run
# spends a few hundred USD at most. They make adstream check and write its cap and spend state.
CAMPAIGN_CAP = FrequencyCap(max=1_000, window_s=3_600)
CAMPAIGN_BUDGET = Budget(lifetime="1000000.000", daily="1000000.000")
# Faust needs several seconds to join its group and make its first commit; adstream may also
# restore tables first.
STARTUP_TIMEOUT_S = 120.0
STALL_TIMEOUT_S = 30.0
MIN_CPU_WINDOW_S = 1.0
"""/proc counts CPU time in clock ticks (10 ms): a shorter window may read as no CPU at all."""
STOP_GRACE_S = 10.0

LETTERS = {"a": "limit", "b": "peer", "c": "adstream"}
RATIO_PAIRS = (("peer", "limit"), ("adstream", "limit"), ("adstream", "peer"))
RATIO_METRICS = (
    ("throughput", "decisions_per_s"),
    ("throughput", "cpu_us_per_decision"),
    ("latency", "p50_ms"),
    ("latency", "p99_ms"),
    ("half_capacity", "p99_ms"),
)


class Contender(msgspec.Struct, frozen=True):
    """How to start one contender, and its topics as suffixes of the run's topic prefix.

    The harness starts `argv` with `env` plus KAFKA_BOOTSTRAP_SERVERS, REDIS_URL and
    ADSTREAM_TOPIC_PREFIX, in a scratch working directory; `{prefix}`, `{scratch}` and
    `{partitions}` in the values of `env` become this run's. Before the start it creates every
    topic in `reads` and `writes` (so all have the run's partition count), publishes the
    campaigns when `campaigns` is among `reads`, and reads decisions from `decisions`. After
    the start it waits for `ready_url`, when there is one, to answer 200.
    """

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = {}
    reads: tuple[str, ...] = (REQUESTS,)
    writes: tuple[str, ...] = (SERVED, DENIED)
    decisions: tuple[str, ...] = (SERVED, DENIED)
    ready_url: str | None = None


def contenders(vast_url: str) -> list[Contender]:
    """Every contender, in report order."""
    stand_in = {VAST_URL_ENV: vast_url}
    return [
        Contender("limit", (sys.executable, "-m", "bench._limit"), stand_in),
        Contender(
            "peer",
            (
                *(sys.executable, "-m", "bench._peer", "worker", "-l", "info"),
                *("--web-port", str(free_port())),
            ),
            stand_in,
            reads=(REQUESTS, PEER_BY_CAMPAIGN),
            writes=(PEER_BY_CAMPAIGN, SERVED, DENIED),
        ),
        adstream_contender(),
    ]


def adstream_contender(settings: Mapping[str, str] | None = None) -> Contender:
    """`adstream worker` with its defaults, but for `settings` (ADSTREAM_* variables)."""
    web_port = free_port()
    return Contender(
        "adstream",
        (sys.executable, "-m", "streams.cli", "worker"),
        {
            "ADSTREAM_WEB_PORT": str(web_port),
            # Its consumer group, internal topics and state are this run's alone.
            "ADSTREAM_APP_ID": "{prefix}adstream",
            "ADSTREAM_DATA_DIR": "{scratch}",
            "ADSTREAM_PARTITIONS": "{partitions}",
            **(settings or {}),
        },
        reads=(REQUESTS, CAMPAIGNS, LEASES),
        writes=(SERVED, DENIED, f"{REQUESTS}-dlq"),
        ready_url=f"http://127.0.0.1:{web_port}{READY_PATH}",
    )


class Options(msgspec.Struct, frozen=True):
    requests: int
    rate: float
    seconds: float
    partitions: int
    only: tuple[str, ...]
    output: Path
    profile: Path | None = None


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="throughput phase size")
    parser.add_argument("--rate", type=float, default=1_000.0, help="latency phase requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument(
        "--only", default="a,b,c", help="contenders by letter or name, e.g. a,b or limit"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="PY_SPY",
        help="py-spy executable: sample each contender's throughput phase (bench/_profile.py)",
    )
    args = parser.parse_args(argv)
    only = tuple(LETTERS.get(item.strip(), item.strip()) for item in args.only.split(","))
    unknown = set(only) - set(LETTERS.values())
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    if args.profile is not None and not args.profile.is_file():
        parser.error(f"--profile: no py-spy at {args.profile}")
    return Options(
        args.requests, args.rate, args.seconds, args.partitions, only, args.output, args.profile
    )


async def start_upstream(work_dir: Path) -> tuple[MeasuredProcess, str]:
    port = free_port()
    upstream = MeasuredProcess(
        "upstream",
        (sys.executable, "-m", "bench._upstream", "--port", str(port), "--file", str(VAST_SAMPLE)),
        {**os.environ, "PYTHONPATH": pythonpath()},
        work_dir,
        work_dir / "upstream.log",
    )
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(port_open, port):
        upstream.check_alive()
        if time.monotonic() > deadline:
            raise ProcessDied(f"the VAST upstream did not listen within 30 s ({upstream.log})")
        await asyncio.sleep(0.1)
    return upstream, f"http://127.0.0.1:{port}{VAST_PATH}"


def pythonpath() -> str:
    return os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))


async def publish_campaigns(producer: Any, topic: str, vast_url: str) -> None:
    for campaign_id in CAMPAIGN_IDS:
        campaign = Campaign(
            schema=SCHEMA_VERSION,
            campaign_id=campaign_id,
            active=True,
            vast_url=vast_url,
            cpm="2.50",
            currency="USD",
            budget=CAMPAIGN_BUDGET,
            frequency_caps=(CAMPAIGN_CAP,),
            anonymous_policy="uncapped",
        )
        await producer.send_and_wait(topic, encode(campaign), key=campaign_id.encode())


async def wait_for_decisions(
    reader: DecisionReader, process: MeasuredProcess, count: int, first_timeout_s: float
) -> None:
    """Until `count` expected decisions are visible, the contender dies, or progress stalls."""
    last_matched, last_progress = reader.matched, time.perf_counter()
    while reader.matched < count:
        await asyncio.sleep(0.02)
        process.check_alive()
        reader.check_alive()
        now = time.perf_counter()
        if reader.matched != last_matched:
            last_matched, last_progress = reader.matched, now
        elif now - last_progress > (STALL_TIMEOUT_S if last_matched else first_timeout_s):
            return


def throughput_result(
    reader: DecisionReader, process: MeasuredProcess, request_ids: Sequence[str], dups: int
) -> dict[str, Any]:
    times = sorted(reader.seen[r] for r in request_ids if r in reader.seen)
    result: dict[str, Any] = {
        "requests": len(request_ids),
        "decisions": len(times),
        "missing": len(request_ids) - len(times),
        "duplicates": reader.duplicates - dups,
        "outcomes": reader.outcomes(request_ids),
        "decisions_per_s": None,
        "cpu_us_per_decision": None,
    }
    if not times:
        return result
    result["startup_s"] = times[0] - process.started
    result["wall_s"] = times[-1] - process.started
    # Decisions made visible in each second since the start: a rate that sags shows here.
    per_second = Counter(int(t - process.started) for t in times)
    result["visible_per_second"] = [per_second[s] for s in range(max(per_second) + 1)]
    window = steady_window(times)
    if window is None or window[1] - window[0] < MIN_CPU_WINDOW_S:
        # Too small a run for a steady window whose CPU time /proc can resolve: count from
        # the start, start-up included.
        start, end, decided = process.started, times[-1], len(times)
    else:
        start, end, decided = window
    result["window_s"] = end - start
    result["window_decisions"] = decided
    result["decisions_per_s"] = decided / (end - start)
    result["cpu_us_per_decision"] = (process.cpu_at(end) - process.cpu_at(start)) / decided * 1e6
    result["machine_busy_cores"] = process.machine_busy_cores(start, end)
    return result


def latency_result(
    reader: DecisionReader,
    process: MeasuredProcess,
    sent_at: dict[str, float],
    published_s: float,
    dups: int,
) -> dict[str, Any]:
    seen = {r: reader.seen[r] for r in sent_at if r in reader.seen}
    latencies_ms = sorted((seen[r] - sent_at[r]) * 1000 for r in seen)
    result: dict[str, Any] = {
        "requests": len(sent_at),
        "offered_per_s": len(sent_at) / published_s,
        "decisions": len(seen),
        "missing": len(sent_at) - len(seen),
        "duplicates": reader.duplicates - dups,
        "outcomes": reader.outcomes(sent_at),
        "p50_ms": None,
        "p99_ms": None,
    }
    if latencies_ms:
        start, end = min(sent_at.values()), max(seen.values())
        result["p50_ms"] = percentile(latencies_ms, 50)
        result["p99_ms"] = percentile(latencies_ms, 99)
        result["max_ms"] = latencies_ms[-1]
        # Below the offered rate, the contender fell behind and the latency is queueing.
        result["decided_per_s"] = len(seen) / (end - start)
        result["cpu_us_per_decision"] = (
            (process.cpu_at(end) - process.cpu_at(start)) / len(seen) * 1e6
        )
        result["machine_busy_cores"] = process.machine_busy_cores(start, end)
    return result


class Deployment:
    """One contender's topics (fresh, named by `prefix`), campaigns, request source and
    decision reader: what a run needs around the contender's process."""

    def __init__(
        self,
        contender: Contender,
        partitions: int,
        services: Services,
        vast_url: str,
        campaign_ids: Sequence[str] = CAMPAIGN_IDS,
    ) -> None:
        """`campaign_ids`: the campaigns the requests name (every one is published)."""
        self.contender = contender
        self.partitions = partitions
        self.services = services
        self.vast_url = vast_url
        self.prefix = f"bench-{contender.name}-{uuid.uuid4().hex[:8]}-"
        bootstrap = services.kafka_bootstrap_servers
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        self.reader = DecisionReader(
            bootstrap, [self.prefix + suffix for suffix in contender.decisions], self.prefix
        )
        self.source = RequestSource(self.producer, self.prefix + REQUESTS, campaign_ids, USERS)

    async def __aenter__(self) -> Deployment:
        topics = dict.fromkeys(self.contender.reads + self.contender.writes, self.partitions)
        await create_topics(
            self.services.kafka_bootstrap_servers,
            {self.prefix + suffix: n for suffix, n in topics.items()},
            self.prefix + CAMPAIGNS,
        )
        await self.producer.start()
        try:
            await self.reader.start()
        except BaseException:
            await self.producer.stop()
            raise
        try:
            if CAMPAIGNS in self.contender.reads:
                await publish_campaigns(self.producer, self.prefix + CAMPAIGNS, self.vast_url)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.reader.stop()
        await self.producer.stop()

    def start(
        self, work_dir: Path, label: str | None = None, contender: Contender | None = None
    ) -> MeasuredProcess:
        """Start the contender (or another process of it, `contender`: its own web port) in
        `work_dir/<label>` (a fresh folder), logging to `work_dir/<label>.log`."""
        contender = contender or self.contender
        label = label or contender.name
        scratch = work_dir / label
        scratch.mkdir()
        values = {"prefix": self.prefix, "scratch": scratch, "partitions": self.partitions}
        env = {
            **os.environ,
            **{name: value.format(**values) for name, value in contender.env.items()},
            "KAFKA_BOOTSTRAP_SERVERS": self.services.kafka_bootstrap_servers,
            "REDIS_URL": self.services.redis_url,
            PREFIX_ENV: self.prefix,
            "PYTHONPATH": pythonpath(),
        }
        return MeasuredProcess(
            contender.name, contender.argv, env, scratch, work_dir / f"{label}.log"
        )

    async def latency_phase(
        self, process: MeasuredProcess, rate: float, seconds: float
    ) -> dict[str, Any]:
        """`rate` requests/s for `seconds`, then until every decision is seen (or progress
        stalls): the end-to-end latency of each."""
        reader = self.reader
        sent_at: dict[str, float] = {}
        reader.expect(sent_at)
        dups = reader.duplicates
        started = time.perf_counter()
        await self.source.publish_at_rate(rate, seconds, sent_at)
        published_s = time.perf_counter() - started
        await wait_for_decisions(reader, process, len(sent_at), STALL_TIMEOUT_S)
        return latency_result(reader, process, sent_at, published_s, dups)


class Profiler:
    """py-spy on a contender from its first visible decision on (its start-up left out) until
    `stop()`; the decisions that became visible meanwhile are counted."""

    def __init__(
        self, py_spy: Path, process: MeasuredProcess, reader: DecisionReader, output: Path
    ) -> None:
        self.reader = reader
        self.spy: PySpy | None = None
        self.decided_before = 0
        self._task = asyncio.create_task(self._start(py_spy, process, output))

    async def _start(self, py_spy: Path, process: MeasuredProcess, output: Path) -> None:
        # The reader has no event to wait on: it counts as it reads.
        while not self.reader.matched:
            process.check_alive()
            await asyncio.sleep(0.02)
        self.decided_before = self.reader.matched
        self.spy = PySpy(py_spy, process.process.pid, output)

    async def stop(self) -> dict[str, Any] | None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.spy is None:
            return None
        decided = self.reader.matched - self.decided_before
        summary = await asyncio.to_thread(self.spy.stop)
        if summary is not None:
            summary["decisions"] = decided
        return summary


async def run_contender(
    contender: Contender, options: Options, services: Services, vast_url: str, work_dir: Path
) -> dict[str, Any]:
    """Both phases for one contender, on topics no other run uses."""
    process: MeasuredProcess | None = None
    async with Deployment(contender, options.partitions, services, vast_url) as deployment:
        reader = deployment.reader
        result: dict[str, Any] = {"topic_prefix": deployment.prefix}
        try:
            print(f"{contender.name}: publishing {options.requests} requests", flush=True)
            request_ids = await deployment.source.publish(options.requests)
            reader.expect(frozenset(request_ids))
            dups = reader.duplicates
            process = deployment.start(work_dir)
            print(
                f"{contender.name}: started, waiting for {options.requests} decisions", flush=True
            )
            profiler = None
            if options.profile is not None:
                raw = work_dir / f"{contender.name}.pyspy.txt"
                profiler = Profiler(options.profile, process, reader, raw)
            try:
                if contender.ready_url is not None:
                    result["ready_s"] = await wait_ready(
                        contender.ready_url, process, STARTUP_TIMEOUT_S
                    )
                await wait_for_decisions(reader, process, len(request_ids), STARTUP_TIMEOUT_S)
            finally:
                if profiler is not None:
                    result["profile"] = await profiler.stop()
            result["throughput"] = throughput_result(reader, process, request_ids, dups)
            if result.get("profile"):
                cpu_us = result["throughput"]["cpu_us_per_decision"]
                print_summary(contender.name, result["profile"], cpu_us)

            print(
                f"{contender.name}: {options.rate:g} requests/s for {options.seconds:g} s",
                flush=True,
            )
            result["latency"] = await deployment.latency_phase(
                process, options.rate, options.seconds
            )
            capacity = result["throughput"]["decisions_per_s"]
            if capacity:
                # Its own half: what the contender's latency is when it is not the bottleneck.
                print(f"{contender.name}: {capacity / 2:.0f} requests/s (half its own rate)")
                result["half_capacity"] = await deployment.latency_phase(
                    process, capacity / 2, options.seconds
                )
        finally:
            if process is not None:
                result["stopped_by"] = await process.stop(STOP_GRACE_S)
    return result


async def run_all(options: Options, services: Services, work_dir: Path) -> dict[str, Any]:
    upstream, vast_url = await start_upstream(work_dir)
    try:
        available = {contender.name: contender for contender in contenders(vast_url)}
        report: dict[str, Any] = {
            "config": {
                "requests": options.requests,
                "rate": options.rate,
                "seconds": options.seconds,
                "partitions": options.partitions,
                "cpus": os.cpu_count(),
                "kafka": services.kafka_source,
                "vast_bytes": VAST_SAMPLE.stat().st_size,
                "source": source_version(REPO),
            },
            "contenders": {},
            "skipped": {},
        }
        for name in options.only:
            if name not in available:
                note = "no such contender"
                print(f"{name}: skipped, {note}", flush=True)
                report["skipped"][name] = note
                continue
            try:
                report["contenders"][name] = await run_contender(
                    available[name], options, services, vast_url, work_dir
                )
            except ProcessDied as exc:
                print(f"{name}: FAILED: {exc}", flush=True)
                report["contenders"][name] = {"error": str(exc)}
        report["ratios"] = ratios(report["contenders"])
        return report
    finally:
        await upstream.stop(STOP_GRACE_S)


def metric(result: dict[str, Any], phase: str, name: str) -> float | None:
    value = result.get(phase, {}).get(name)
    return value if isinstance(value, float) else None


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """`x/y` for each pair of contenders that both ran, metric by metric."""
    found: dict[str, dict[str, float]] = {}
    for top, bottom in RATIO_PAIRS:
        if top in results and bottom in results:
            pair: dict[str, float] = {}
            for phase, name in RATIO_METRICS:
                x, y = metric(results[top], phase, name), metric(results[bottom], phase, name)
                if x is not None and y:
                    pair[name] = x / y
            found[f"{top}/{bottom}"] = pair
    return found


def print_table(report: dict[str, Any]) -> None:
    width = 14

    def cell(value: float | None, digits: int) -> str:
        return f"{value:>{width},.{digits}f}" if value is not None else f"{'-':>{width}}"

    columns = ["decisions/s", "CPU us/dec", "p50 ms", "p99 ms", "p99 ms@half", "CPU us/dec@r"]
    columns += ["missing", "dups"]
    columns.append("busy cores")
    print(f"\n{'':<16}" + "".join(f"{column:>{width}}" for column in columns))
    for name, result in report["contenders"].items():
        if "error" in result:
            print(f"{name:<16}failed (see above)")
            continue
        phases = [p for p in ("throughput", "latency", "half_capacity") if p in result]
        print(
            f"{name:<16}"
            + cell(metric(result, "throughput", "decisions_per_s"), 0)
            + cell(metric(result, "throughput", "cpu_us_per_decision"), 0)
            + cell(metric(result, "latency", "p50_ms"), 1)
            + cell(metric(result, "latency", "p99_ms"), 1)
            + cell(metric(result, "half_capacity", "p99_ms"), 1)
            + cell(metric(result, "latency", "cpu_us_per_decision"), 0)
            + f"{sum(result[p]['missing'] for p in phases):>{width}}"
            + f"{sum(result[p]['duplicates'] for p in phases):>{width}}"
            # The whole machine's load in the throughput phase, the contender's included: on
            # a shared machine, more than the run's own processes explain means noise.
            + cell(metric(result, "throughput", "machine_busy_cores"), 2)
        )
    for pair, values in report["ratios"].items():
        print(
            f"{pair:<16}"
            + "".join(
                f"{values[name]:>{width - 1}.2f}x" if name in values else f"{'-':>{width}}"
                for _, name in RATIO_METRICS
            )
        )
    rate = report["config"]["rate"]
    for name, result in report["contenders"].items():
        decided = metric(result, "throughput", "decisions_per_s")
        if decided is not None and decided < rate:
            print(
                f"note: {name} decides fewer than {rate:g} requests/s, so its latency at that "
                "load is mostly queueing"
            )


def panels(report: dict[str, Any]) -> list[Panel]:
    """What the picture beside the report shows: each contender's main numbers."""
    ran = {name: result for name, result in report["contenders"].items() if "error" not in result}
    return [
        Panel(title, {name: result.get(phase, {}).get(key) for name, result in ran.items()})
        for title, phase, key in (
            ("decisions/s (throughput phase)", "throughput", "decisions_per_s"),
            ("CPU us per decision (throughput phase)", "throughput", "cpu_us_per_decision"),
            ("p50 latency, ms (latency phase)", "latency", "p50_ms"),
            ("p99 latency, ms (latency phase)", "latency", "p99_ms"),
            ("p99 latency, ms (at half its own rate)", "half_capacity", "p99_ms"),
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every contender that ran decided every request exactly once."""
    options = parse_args(argv)
    report = run_and_save(
        "pipeline",
        lambda services, work_dir: run_all(options, services, work_dir),
        print_table,
        options.output,
        panels,
    )
    exact = all(
        "error" not in result
        and all(
            result[phase]["missing"] == 0 and result[phase]["duplicates"] == 0
            for phase in ("throughput", "latency", "half_capacity")
            if phase in result
        )
        for result in report["contenders"].values()
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
