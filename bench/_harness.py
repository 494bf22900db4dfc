"""The pipeline benchmark's tools: contender processes and their CPU time, the request source,
the read_committed decision reader, and the arithmetic of the results.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench._plot import Panel, save_beside
from infra.process import tail
from infra.provision import Services, provide_services
from models.codec import encode
from models.context import SessionContext, user_key
from models.events import SCHEMA_VERSION, AdRequest

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CPU_SAMPLE_S = 0.05
# Members of a contender's process group are looked up this often: scanning /proc costs
# milliseconds, reading a known pid's stat microseconds.
GROUP_RESCAN_S = 1.0
# Decisions seen this close together became visible in the same commit (see `steady_window`).
JUMP_S = 0.05


class ProcessDied(RuntimeError):
    pass


def source_version(repo: Path) -> str | None:
    """The commit measured (`git describe --always --dirty`), or None outside a git checkout:
    results are only comparable between runs of the same worker code."""
    try:
        described = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip() or None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return stat.rsplit(")", 1)[1].split()


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core, every process: the broker,
    the harness, the upstream, the contender and anyone else's work)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


class MeasuredProcess:
    """A process started in its own process group, whose CPU time is sampled from /proc.

    CPU is sampled on a timer rather than read at the moments that matter, because which
    moments matter (the edges of the steady window) is known only once the phase is over.
    """

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path
    ) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.perf_counter()
        self.samples: list[tuple[float, float, float]] = []
        """(time.perf_counter(), the group's CPU seconds, the machine's busy CPU seconds)"""
        self._members = [self.process.pid]
        self._sampler = asyncio.create_task(self._sample())

    def cpu_s(self) -> float:
        """User + system CPU seconds of every live process of the group."""
        ticks = 0
        for pid in self._members:
            fields = _stat_fields(pid)
            if fields is not None:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / CLOCK_TICKS_PER_S

    async def _sample(self) -> None:
        rescan_at = time.perf_counter() + GROUP_RESCAN_S
        while True:
            now = time.perf_counter()
            if now >= rescan_at:
                self._members = _group_members(self.process.pid) or [self.process.pid]
                rescan_at = now + GROUP_RESCAN_S
            self.samples.append((now, self.cpu_s(), machine_busy_s()))
            await asyncio.sleep(CPU_SAMPLE_S)

    def cpu_at(self, moment: float) -> float:
        """The CPU time sampled closest to `moment` (a `time.perf_counter()` value)."""
        return self._nearest(moment)[1]

    def machine_busy_cores(self, start: float, end: float) -> float:
        """How many cores the whole machine kept busy on average between two moments."""
        return (self._nearest(end)[2] - self._nearest(start)[2]) / (end - start)

    def _nearest(self, moment: float) -> tuple[float, float, float]:
        times = [sample[0] for sample in self.samples]
        i = bisect.bisect_left(times, moment)
        nearest = min(
            (j for j in (i - 1, i) if 0 <= j < len(times)), key=lambda j: abs(times[j] - moment)
        )
        return self.samples[nearest]

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ProcessDied(f"{self.name} exited with {code}; log {self.log}:\n{tail(self.log)}")

    async def stop(self, grace_s: float) -> str:
        """SIGTERM the group, SIGKILL it after `grace_s`; say which one ended it."""
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        return await asyncio.to_thread(self._stop, grace_s)

    def _stop(self, grace_s: float) -> str:
        for sig, wait_s, outcome in (
            (signal.SIGTERM, grace_s, "sigterm"),
            (signal.SIGKILL, 5.0, "sigkill"),
        ):
            if self.process.poll() is not None:
                return f"exited {self.process.returncode}"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
            return outcome
        return "unkillable"


async def wait_ready(url: str, process: MeasuredProcess, timeout_s: float) -> float:
    """Poll `url` until it answers 200; the seconds from the process' start until then."""
    deadline = time.perf_counter() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            process.check_alive()
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return time.perf_counter() - process.started
            if time.perf_counter() > deadline:
                raise ProcessDied(f"{process.name} was not ready within {timeout_s:.0f} s: {url}")
            await asyncio.sleep(0.1)


async def create_topics(bootstrap: str, partitions: Mapping[str, int], compacted: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=count,
                    replication_factor=1,
                    topic_configs={"cleanup.policy": "compact"} if name == compacted else None,
                )
                for name, count in partitions.items()
            ]
        )
        refused = {
            topic: (message or [None])[0] or f"error {code}"
            for topic, code, *message in response.topic_errors
            if code != 0
        }
        if refused:
            raise ProcessDied(f"the broker refused to create topics: {refused}")
        # Producing before every partition has a leader only earns retries and warnings.
        while True:
            described = await admin.describe_topics(list(partitions))
            led = {
                topic["topic"]: sum(1 for p in topic["partitions"] if p["leader"] >= 0)
                for topic in described
            }
            if all(led.get(name) == count for name, count in partitions.items()):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


class RequestSource:
    """Fresh ad requests, spread over users and campaigns, published to one topic.

    Many campaigns, so that re-keying by campaign spreads over partitions; many users, so that
    the user-keyed input does too.
    """

    def __init__(
        self, producer: Any, topic: str, campaign_ids: Sequence[str], users: int, seed: int = 4
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.campaign_ids = campaign_ids
        self.users = users
        self.rng = random.Random(seed)

    async def send_one(self) -> tuple[str, asyncio.Future[Any]]:
        """Publish one request now; its request_id and the future of its broker ack."""
        context = SessionContext.create(
            cookies={"user_id": f"user-{self.rng.randrange(self.users)}"}
        )
        request = AdRequest(
            schema=SCHEMA_VERSION,
            context=context,
            campaign_id=self.rng.choice(self.campaign_ids),
            placement_id="placement-bench",
        )
        acked = await self.producer.send(
            self.topic,
            encode(request),
            key=user_key(context).encode(),
            timestamp_ms=context.timestamp,
        )
        return context.request_id, acked

    async def publish(self, count: int) -> list[str]:
        """Publish `count` requests as fast as the producer takes them, and wait for the acks."""
        sent = [await self.send_one() for _ in range(count)]
        await asyncio.gather(*(acked for _, acked in sent))
        return [request_id for request_id, _ in sent]

    async def publish_at_rate(self, rate: float, seconds: float, sent_at: dict[str, float]) -> None:
        """Publish `rate` requests per second for `seconds`, noting when each one was sent.

        `sent_at` is filled as the requests go, so a reader can already match their decisions.
        """
        total = round(rate * seconds)
        acks = []
        start = time.perf_counter()
        while len(sent_at) < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while len(sent_at) < due:
                now = time.perf_counter()
                request_id, acked = await self.send_one()
                sent_at[request_id] = now
                acks.append(acked)
            await asyncio.sleep(0.001)
        await asyncio.gather(*acks)


class _Decision(msgspec.Struct):
    request_id: str
    reason: str | None = None
    """adstream's `AdDenied` says why."""


class DecisionReader:
    """A read_committed consumer of the decision topics, from their beginning.

    It notes when each request_id is first seen, and as what (the topic without `prefix`,
    and a denial's reason); every later sighting is a duplicate, which exactly-once forbids.
    """

    def __init__(self, bootstrap: str, topics: Collection[str], prefix: str = "") -> None:
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # The reader's own wait must not show up as the contenders' latency.
            fetch_max_wait_ms=5,
        )
        self.prefix = prefix
        self.seen: dict[str, float] = {}
        self.outcome: dict[str, str] = {}
        self.duplicates = 0
        self.expected: Collection[str] = frozenset()
        self.matched = 0
        self._decoder = msgspec.json.Decoder(_Decision)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._read())

    def expect(self, request_ids: Collection[str]) -> None:
        """Count, from now on, how many of `request_ids` have been seen (in `matched`)."""
        self.expected = request_ids
        self.matched = sum(1 for request_id in request_ids if request_id in self.seen)

    def outcomes(self, request_ids: Iterable[str]) -> dict[str, int]:
        """How many of `request_ids` were decided as what, e.g. `{"ad-served": 9998,
        "ad-denied:no_fill": 2}`."""
        counts = Counter(self.outcome[r] for r in request_ids if r in self.outcome)
        return dict(sorted(counts.items()))

    def check_alive(self) -> None:
        if self._task is not None and self._task.done():
            self._task.result()

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    decision = self._decoder.decode(record.value)
                    request_id = decision.request_id
                    if request_id in self.seen:
                        self.duplicates += 1
                    else:
                        self.seen[request_id] = now
                        outcome = record.topic.removeprefix(self.prefix)
                        if decision.reason is not None:
                            outcome = f"{outcome}:{decision.reason}"
                        self.outcome[request_id] = outcome
                        if request_id in self.expected:
                            self.matched += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


def steady_window(times: Sequence[float]) -> tuple[float, float, int] | None:
    """The steady part of a run from the sorted times its decisions became visible.

    Visibility comes in jumps, one per transaction commit, which Faust, for one, makes only
    every 2.8 s. Each jump shows what was processed up to its moment while the contender was
    busy, but the last one also waits out a partial commit interval during which the contender
    was idle. So the window runs from the first jump to the last jump but one: (start, end,
    decisions that became visible in between), or None when there are too few jumps.
    """
    first_jump_end = bisect.bisect_right(times, times[0] + JUMP_S) - 1
    before_last_jump = bisect.bisect_left(times, times[-1] - JUMP_S) - 1
    if before_last_jump <= first_jump_end:
        return None
    return times[first_jump_end], times[before_last_jump], before_last_jump - first_jump_end


def percentile(values: Sequence[float], pct: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def run_and_save(
    name: str,
    run_all: Callable[[Services, Path], Coroutine[Any, Any, dict[str, Any]]],
    print_table: Callable[[dict[str, Any]], None],
    output: Path,
    panels: Callable[[dict[str, Any]], list[Panel]],
) -> dict[str, Any]:
    """Run a benchmark against the services at hand, print its table, save its report and
    the picture of `panels(report)` beside it."""
    # Fresh topics answer NotLeader for a moment after their creation: aiokafka retries and
    # logs each retry, even as an error. What matters is checked anyway: every decision, once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    work_dir = Path(tempfile.mkdtemp(prefix=f"adstream-{name}-"))
    with provide_services() as services:
        report = asyncio.run(run_all(services, work_dir))
    print_table(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    picture = save_beside(output, f"bench.{name}: {output.name}", panels(report))
    print(f"\nsaved to {output} and {picture}; logs in {work_dir}")
    return report
