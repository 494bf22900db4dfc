"""One demo run against a Kafka cluster and a Redis server that are up.

In order: the VAST upstream starts, the topics of this run are created (its own prefix and
consumer group, so runs never meet), one worker process starts and becomes ready, the sample
campaigns are loaded and in force, the stream is published, the decisions are read back with
read_committed until each request has one, the worker's tables are asked for their spend, the
worker is stopped (SIGTERM, then SIGKILL), `budget-leases` is read, and the summary is
printed. Progress goes to stderr, the summary to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click
import httpx
import msgspec
from aiokafka import AIOKafkaProducer

from infra.process import free_port
from models.events import Campaign
from streams.admin import ensure_topics, publish_campaigns, read_campaigns
from streams.audit.findings import Record
from streams.audit.leases import LeaseHistory
from streams.committed_reader import read_committed
from streams.decision_reader import DecisionReader
from streams.demo.summary import Expected, Summary, render, summarize
from streams.demo.traffic import Message, Traffic, TrafficPlan, generate
from streams.demo.upstream import DemoUpstream, rebase
from streams.plot import write_png
from streams.settings import Settings
from streams.topics import Topics, key_partition
from streams.worker.process import WorkerProcess

PARTITIONS = 4
"""Enough to show the repartitioning by user and by campaign; few, on a small machine."""
STALL_S = 60.0
"""Give up when no decision has arrived for this long."""
TICKS_PER_S = 20
"""How often the publisher sends its next few messages."""


class DemoFailed(Exception):
    """The run could not finish; the message says why and where the logs are."""


class DemoOptions(msgspec.Struct, frozen=True):
    requests: int = 5000
    users: int = 300
    hours: float = 6.0
    seed: int = 7
    rate: int = 250
    """Messages published per second."""
    keep_running: bool = False
    plot: Path | None = None
    """Where to write the summary's pictures (PNG), if anywhere."""


CAMPAIGNS = Path(__file__).with_name("campaigns.json")
"""The sample campaigns, also for `adstream campaigns load` (package data: a file on disk)."""


def _status(text: str) -> None:
    click.echo(text, err=True)


def _settings(bootstrap: str, redis_url: str, work_dir: Path) -> Settings:
    """A worker of its own: topics, consumer group and Redis keys under a fresh prefix."""
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        redis_url=redis_url,
        web_port=free_port(),
        web_bind="127.0.0.1",
        topic_prefix=f"{run_id}-",
        partitions=PARTITIONS,
        data_dir=str(work_dir / "state"),
    )


async def run_demo(bootstrap: str, redis_url: str, options: DemoOptions, work_dir: Path) -> Summary:
    """Run the demo; the worker's log and state live in `work_dir`."""
    # SIGTERM ends the run like Ctrl-C does, through the clean-up below: the worker runs in
    # a session of its own and would outlive this process otherwise.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    settings = _settings(bootstrap, redis_url, work_dir)
    topics = Topics.named(settings.topic_prefix)
    upstream = DemoUpstream()
    reader = DecisionReader(bootstrap, topics)
    worker = WorkerProcess.for_settings(settings, work_dir / "worker.log")
    try:
        origin = await upstream.start()
        campaigns = [rebase(campaign, origin) for campaign in read_campaigns(CAMPAIGNS)]
        documents = "vast-client-js samples + " if upstream.using_samples else ""
        _status(f"VAST upstream: {origin}/vast/ ({documents}streams/demo/vast/)")
        # Created here, not only by the worker: a broker may auto-create a topic the reader
        # asks for first, with its defaults.
        partitions = await ensure_topics(bootstrap, topics, settings.partitions)
        # Before the worker starts, as in a deployment: it reads them before any request.
        # The decisions name the version they applied, and the summary checks it.
        versions = await publish_campaigns(bootstrap, topics.campaigns, campaigns)
        _status(f"campaigns loaded: {', '.join(c.campaign_id for c in campaigns)}")
        _status(f"starting a worker (topics {topics.requests} ...; log {worker.log_path})...")
        worker.start()
        started = time.monotonic()
        await worker.wait_ready()
        _status(f"worker ready in {time.monotonic() - started:.1f} s at {worker.url('/')}")
        # Only now: the new topics have their leaders (no retried fetches in the output), and
        # reading from the beginning misses nothing.
        await reader.start()
        plan = TrafficPlan(
            end_ms=time.time_ns() // 1_000_000,
            requests=options.requests,
            users=options.users,
            hours=options.hours,
            seed=options.seed,
        )
        traffic = generate(plan, campaigns)
        _status(_describe(traffic))
        expected = Expected(
            frozenset(traffic.request_ids),
            resent=traffic.count("duplicate"),
            malformed=traffic.count("malformed"),
            versions={c.campaign_id: v for c, v in zip(campaigns, versions, strict=True)},
            placement=_placement(traffic, partitions.requests),
        )
        started = time.monotonic()
        await _publish(bootstrap, topics.requests, traffic.messages, options.rate)
        await _await_decisions(reader, worker, expected)
        elapsed = time.monotonic() - started
        _status(f"{len(expected.request_ids):,} requests decided in {elapsed:.1f} s")
        table_spend = await _table_spend(worker, campaigns)
        if not options.keep_running:
            await _stop(worker)
        if not await reader.caught_up():
            raise DemoFailed("the decisions could not be read to the end of their topics")
        summary = summarize(
            expected,
            reader.decisions,
            reader.duplicates,
            reader.dead_letters,
            campaigns,
            table_spend,
            await _leases(bootstrap, topics.leases),
        )
        click.echo(render(summary))
        if options.plot is not None:
            write_png(summary.timeline, options.plot, f"adstream demo ({topics.requests})")
            _status(f"plot: {options.plot}")
        click.echo(_upstream_line(upstream))
        if options.keep_running:
            path = work_dir / "campaigns.json"
            path.write_bytes(msgspec.json.format(msgspec.json.encode(campaigns)))
            click.echo(_keep_running(settings, worker, upstream, path, campaigns[0]))
            await _until_stopped()
        else:
            click.echo(_next_steps(upstream, settings))
        return summary
    finally:
        await _stop(worker)
        await reader.stop()
        await upstream.stop()
        shutil.rmtree(work_dir / "state", ignore_errors=True)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _describe(traffic: Traffic) -> str:
    plan = traffic.plan
    return (
        f"publishing {len(traffic.messages):,} messages, event times "
        f"{_utc(plan.start_ms)} .. {_utc(plan.end_ms)} UTC: "
        f"{traffic.count('request'):,} requests from {plan.users} users "
        f"({traffic.anonymous} anonymous), {traffic.count('duplicate')} re-sent, "
        f"{traffic.count('malformed')} malformed (seed {plan.seed})"
    )


async def _publish(bootstrap: str, topic: str, messages: Sequence[Message], rate: int) -> None:
    """Publish at `rate` messages a second, the way edges would send a live stream.

    A live stream reaches the worker's partitions in step. Sent all at once, it would be a
    backlog, which the worker reads one partition ahead of another, hours of event time
    apart: a different test, and one today's worker fails (a user's frequency state expires
    by the watermark of the campaign's partition, which such a backlog pushes hours ahead
    of the user's own requests; reported on #4).
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    size = max(1, rate // TICKS_PER_S)
    started = time.monotonic()
    try:
        with click.progressbar(
            length=len(messages), label="publishing", file=click.get_text_stream("stderr")
        ) as bar:
            for tick, start in enumerate(range(0, len(messages), size)):
                await asyncio.sleep(started + tick * size / rate - time.monotonic())
                chunk = messages[start : start + size]
                sent = [
                    await producer.send(
                        topic,
                        message.record.value,
                        key=message.record.key,
                        timestamp_ms=message.record.timestamp_ms,
                    )
                    for message in chunk
                ]
                await asyncio.gather(*sent)
                bar.update(len(chunk))
    finally:
        await producer.stop()


async def _await_decisions(
    reader: DecisionReader, worker: WorkerProcess, expected: Expected
) -> None:
    """Until every request has a decision and every malformed message a dead letter."""
    total = len(expected.request_ids) + expected.malformed

    def arrived() -> int:
        decided = len(expected.request_ids & reader.decisions.keys())
        return decided + min(len(reader.dead_letters), expected.malformed)

    shown, last_progress = 0, time.monotonic()
    with click.progressbar(
        length=total, label="deciding ", file=click.get_text_stream("stderr")
    ) as bar:
        while shown < total:
            await asyncio.sleep(0.25)
            reader.check_alive()
            count = arrived()
            if count > shown:
                bar.update(count - shown)
                shown, last_progress = count, time.monotonic()
            elif not worker.running():
                raise DemoFailed(
                    f"the worker exited with {worker.stop()} before deciding everything "
                    f"({total - shown} missing):\n{worker.log_tail()}"
                )
            elif time.monotonic() - last_progress > STALL_S:
                raise DemoFailed(
                    f"{total - shown} of {total} requests and malformed messages got no "
                    f"decision or dead letter in {STALL_S:.0f} s without progress; worker "
                    f"log {worker.log_path}:\n{worker.log_tail()}"
                )


def _placement(traffic: Traffic, partitions: int) -> dict[str, tuple[int, int]]:
    """Per request: the partition of `ad-requests` its key goes to, its place in the stream."""
    found: dict[str, tuple[int, int]] = {}
    for index, message in enumerate(traffic.messages):
        if message.request_id is not None:
            partition = key_partition(message.record.key.decode(), partitions)
            found.setdefault(message.request_id, (partition, index))
    return found


async def _leases(bootstrap: str, topic: str) -> LeaseHistory:
    """Every committed record of `budget-leases`, folded."""
    history = LeaseHistory()
    await read_committed(
        bootstrap,
        {topic: lambda r: history.add(Record(r.partition, r.offset, r.timestamp, r.key, r.value))},
    )
    return history


async def _table_spend(
    worker: WorkerProcess, campaigns: Sequence[Campaign]
) -> dict[str, int] | None:
    """Lifetime spend per campaign as the worker's tables hold it (its web route), or None
    when the route fails."""
    spent = {}
    for campaign in campaigns:
        try:
            state = await worker.state(campaign.campaign_id)
        except httpx.HTTPStatusError as exc:
            # Seen on the first worker of a fresh broker: Faust's table route fails for good
            # when the producer's metadata lacks the changelog topic (reported on #4).
            _status(
                f"the worker's table route answered HTTP {exc.response.status_code}: "
                f"its spend is not compared (log {worker.log_path})"
            )
            return None
        spent[campaign.campaign_id] = 0 if state.spend is None else state.spend.lifetime
    return spent


async def _stop(worker: WorkerProcess) -> None:
    """SIGTERM, then SIGKILL after a grace period; in a thread, so that the upstream in this
    process keeps answering the worker's last requests while it drains."""
    if worker.running():
        _status("stopping the worker (SIGTERM)...")
        status = await asyncio.to_thread(worker.stop)
        if status != 0:
            _status(f"the worker ended with status {status}; log {worker.log_path}")


async def _until_stopped() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    try:
        await stopped.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _upstream_line(upstream: DemoUpstream) -> str:
    answers = ", ".join(f"{answer} {count:,}" for answer, count in upstream.answers.most_common())
    pixels = ", ".join(f"{pixel} {count:,}" for pixel, count in upstream.pixels.most_common())
    return f"\nVAST upstream answered: {answers}; pixels received: {pixels or 'none'}"


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _next_steps(upstream: DemoUpstream, settings: Settings) -> str:
    prefix = settings.topic_prefix
    return "\n".join(
        [
            "",
            "what to run next:",
            "  # bill and audit this run (with a broker that outlives the demo:",
            '  # eval "$(adstream infra up)" before `adstream demo`)',
            f"  export ADSTREAM_TOPIC_PREFIX={prefix}",
            "  adstream billing --ledger billing.db --until-caught-up",
            "  adstream billing report --ledger billing.db",
            "  adstream audit --ledger billing.db",
            "  # the same, then everything stays up to explore until Ctrl-C",
            "  adstream demo --keep-running",
            "  # one tag through its wrapper chain (while a demo's upstream runs)",
            f"  adstream vast resolve {upstream.url('wrapper.xml')}",
            "  # the demo's campaigns, into a deployment of your own",
            f"  adstream campaigns load {_shown(CAMPAIGNS)}",
            "  # a running worker's Prometheus metrics (port: ADSTREAM_WEB_PORT)",
            "  curl http://127.0.0.1:6066/metrics",
            "  # its status page, in a browser: http://127.0.0.1:6066/adstream/status/",
        ]
    )


def _keep_running(
    settings: Settings,
    worker: WorkerProcess,
    upstream: DemoUpstream,
    campaigns_path: Path,
    example: Campaign,
) -> str:
    env = settings.as_env()
    shared = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "ADSTREAM_TOPIC_PREFIX", "ADSTREAM_APP_ID")
    exports = " ".join(f"{name}={env[name]}" for name in shared)
    return "\n".join(
        [
            "",
            f"still running: the worker (pid {worker.pid}) and the VAST upstream, and Kafka and",
            "Redis if the demo started them. Ctrl-C here stops them all; meanwhile, elsewhere:",
            f"  export {exports}",
            f"  curl {worker.url('/metrics')}",
            f"  curl '{worker.url(f'/adstream/state/{example.campaign_id}/')}?user=user-0001'",
            f"  adstream vast resolve {upstream.url('wrapper.xml')}",
            f"  adstream campaigns load {campaigns_path}",
            f"  tail -f {worker.log_path}",
        ]
    )
