"""Scale-out and fault scenarios against a real broker, Redis and HTTP upstream (issue 6).

One place for each scenario: `tests/scale/` runs them at the small size (and the full size
with `-m full`), `python -m bench.reliability` runs them all and writes `docs/reliability.md`.

Every scenario publishes a stream, does something unkind to the deployment in the middle of
it, reads every decision back with a read_committed consumer and audits (`audit`):

- exactly one decision per valid request, no duplicates, no decision for anything else;
- no frequency cap and no budget exceeded (recomputed from the served decisions alone);
- the spend in the worker's tables equal to the sum of the served costs, to the micro;
- every broken input in the DLQ with its reason; nothing lost;
- where the outcome does not depend on how partitions interleave users (campaigns with
  caps but no budget; budget-only uncapped campaigns by count), the decisions equal those of
  a one-at-a-time reference: the fault changed no decision.

A scenario returns a `Result`; anything that broke an invariant is listed in its `problems`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import random
import re
import signal
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka.partitioner import murmur2
from redis.exceptions import RedisError

from infra.broker import KafkaBroker
from infra.redis_server import RedisServer
from models.codec import encode
from models.context import user_key
from models.events import AdRequest, Campaign
from models.money import from_micros, to_micros
from streams.audit import Auditor, replay
from streams.decision_reader import Decision
from streams.invariants import (
    budget_violations,
    cap_violations,
    spend_by_campaign,
    spend_by_day,
)
from streams.lookaside import CapView, cached_spend, cap_key, spend_key
from streams.worker.exit_status import FAILED_EXIT
from streams.worker.outputs import KEPT_KEY_BYTES, KEPT_VALUE_BYTES
from streams.worker.process import WorkerFailed, WorkerProcess
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request
from tests.scale.fuzz import Raw, campaign_fuzz, request_fuzz
from tests.upstream import VastServer, inline, vast, wrapper

# ---------------------------------------------------------------------------------------
# Sizes, environment, results


@dataclass(frozen=True)
class Size:
    name: str
    scale_requests: int
    volume_valid: int
    volume_broken: int
    hostile_requests: int
    redis_requests: int
    broker_requests: int
    state_keys: int
    fuzz_valid: int
    fuzz_hostile: int
    lease_requests: int


SMALL = Size(
    "small",
    scale_requests=2_400,
    volume_valid=3_000,
    volume_broken=600,
    hostile_requests=1_200,
    redis_requests=1_200,
    broker_requests=1_500,
    state_keys=8_000,
    fuzz_valid=2_000,
    fuzz_hostile=3_000,
    lease_requests=1_600,
)
FULL = Size(
    "full",
    scale_requests=40_000,
    volume_valid=100_000,
    volume_broken=20_000,
    hostile_requests=20_000,
    redis_requests=20_000,
    broker_requests=30_000,
    state_keys=1_000_000,
    fuzz_valid=30_000,
    fuzz_hostile=30_000,
    lease_requests=20_000,
)
SIZES = {size.name: size for size in (SMALL, FULL)}


@dataclass
class Env:
    """The shared services a scenario may use; restart scenarios start their own."""

    bootstrap: str
    redis_url: str
    vast: VastServer
    root: Path


class Result(msgspec.Struct):
    scenario: str
    title: str
    size: str
    requests: int = 0
    """Valid, distinct requests published."""
    broken: int = 0
    resent: int = 0
    """Valid requests published a second time (they must not be decided twice)."""
    decisions: int = 0
    duplicates: int = 0
    cap_violations: int = 0
    budget_violations: int = 0
    spend_mismatches: int = 0
    model_mismatches: int = 0
    lost: int = 0
    """Valid requests without a decision plus broken inputs missing from the DLQ."""
    dead_letters: int = 0
    outcomes: dict[str, int] = msgspec.field(default_factory=dict)
    timings_s: dict[str, float] = msgspec.field(default_factory=dict)
    measures: dict[str, Any] = msgspec.field(default_factory=dict)
    problems: list[str] = msgspec.field(default_factory=list)
    seconds: float = 0.0
    source: str = ""
    """The commit the scenario ran at (`bench.reliability` fills it in)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, problem: str) -> None:
        self.problems.append(problem)


class ScenarioFailed(AssertionError):
    pass


def check(result: Result) -> Result:
    """Raise with every problem if the scenario broke an invariant."""
    if result.problems:
        raise ScenarioFailed(f"{result.scenario}: " + "; ".join(result.problems))
    return result


# ---------------------------------------------------------------------------------------
# Campaigns, workloads, publishing


def partition_of(key: str, partitions: int) -> int:
    """Where Kafka's default partitioner puts `key` (campaign-keyed topics)."""
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def campaign_ids(count: int, partitions: int, tag: str) -> list[str]:
    """`count` fresh campaign ids, spread evenly over the partitions."""
    ids = []
    for index in range(count):
        while True:
            candidate = f"{tag}{index}-{uuid.uuid4().hex[:6]}"
            if partition_of(candidate, partitions) == index % partitions:
                ids.append(candidate)
                break
    return ids


def campaign_mix(
    url: str, count: int, partitions: int, per_campaign: int, tag: str = "c"
) -> dict[str, Campaign]:
    """Campaigns of four kinds in turn, with budgets that run out within the stream:
    caps only; budget only (uncapped, serves anonymous users); caps and a daily budget;
    caps only, serving anonymous users uncapped."""
    made = {}
    for index, campaign_id in enumerate(campaign_ids(count, partitions, tag)):
        kind = index % 4
        if kind == 0:
            made[campaign_id] = campaign(url, campaign_id=campaign_id, caps=[(2, 600), (4, 3600)])
        elif kind == 1:
            lifetime = f"{per_campaign * 2500 * 4 // 10 / 1_000_000:.6f}"
            made[campaign_id] = campaign(
                url, campaign_id=campaign_id, lifetime=lifetime, anonymous_policy="uncapped"
            )
        elif kind == 2:
            daily = f"{per_campaign * 3333 * 3 // 10 / 1_000_000:.6f}"
            made[campaign_id] = campaign(
                url, campaign_id=campaign_id, cpm="3.333", caps=[(1, 300)], daily=daily
            )
        else:
            made[campaign_id] = campaign(
                url, campaign_id=campaign_id, caps=[(3, 1800)], anonymous_policy="uncapped"
            )
    return made


def workload(
    rng: random.Random,
    campaign_ids: Sequence[str],
    count: int,
    users: int,
    *,
    start_ms: int = BASE_MS,
    span_ms: int = 45 * 60_000,
    anonymous: float = 0.1,
    user_prefix: str = "user",
) -> list[AdRequest]:
    """`count` requests with rising event times over `span_ms` (under the hour of allowed
    lateness, so no interleaving of partitions makes a request late)."""
    step = max(1, span_ms // max(count, 1))
    return [
        request(
            rng.choice(campaign_ids),
            start_ms + index * step,
            None if rng.random() < anonymous else f"{user_prefix}-{rng.randrange(users)}",
        )
        for index in range(count)
    ]


Item = AdRequest | Raw


async def publish(
    deployment: Deployment,
    items: Sequence[Item],
    *,
    chunk: int = 200,
    pause_s: float = 0.05,
    published_at: dict[str, float] | None = None,
) -> None:
    """Publish steadily: `chunk` messages, a flush, a pause."""
    producer = deployment.producer
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        requests = [item for item in part if isinstance(item, AdRequest)]
        for item in part:
            if isinstance(item, Raw):
                topic = getattr(deployment.topics, item.topic)
                await producer.send(topic, item.value, key=item.key)
        await deployment.publish(*requests)
        if published_at is not None:
            now = time.monotonic()
            for item in requests:
                published_at.setdefault(item.context.request_id, now)
        if pause_s:
            await asyncio.sleep(pause_s)


# ---------------------------------------------------------------------------------------
# The audit


def reference_outcomes(
    requests: Iterable[AdRequest], campaigns: Mapping[str, Campaign]
) -> dict[str, str]:
    """One-at-a-time outcomes (served, or the denial reason) of the requests whose outcome
    the order between users cannot change: those of campaigns without a budget, given an
    upstream that always fills. A user's requests keep their order through the pipeline."""
    history: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    outcomes = {}
    for item in requests:
        rules = campaigns[item.campaign_id]
        if rules.budget.lifetime is not None or rules.budget.daily is not None:
            continue
        user = item.context.cookies.get("user_id")
        t = item.context.timestamp
        if not rules.active:
            outcome = "campaign_inactive"
        elif not rules.frequency_caps:
            outcome = "served"
        elif user is None:
            outcome = "served" if rules.anonymous_policy == "uncapped" else "anonymous"
        else:
            times = history[(user, item.campaign_id)]
            fits = all(
                sum(1 for s in times if t - cap.window_s * 1000 < s <= t) < cap.max
                for cap in rules.frequency_caps
            )
            outcome = "served" if fits else "frequency_cap"
            if fits:
                times.append(t)
        outcomes[item.context.request_id] = outcome
    return outcomes


def outcome_of(decision: Decision) -> str:
    return "served" if decision.topic == "served" else str(decision.reason)


async def audit(
    result: Result,
    deployment: Deployment,
    requests: Sequence[AdRequest],
    campaigns: Mapping[str, Campaign],
    *,
    broken: Sequence[Raw] = (),
    resent: int = 0,
    reference: bool = True,
    fills: Callable[[str], bool] = lambda campaign_id: True,
    quiet_s: float = 60.0,
) -> None:
    """Wait for every decision and dead letter, as long as some keep arriving (at most
    `quiet_s` between two: a full-size run takes minutes), then check the invariants into
    `result`."""
    ids = [item.context.request_id for item in requests]
    wanted = set(ids)

    def arrived() -> int:
        return len(deployment.decisions) + len(deployment.dead_letters)

    def complete() -> bool:
        return wanted <= deployment.decisions.keys() and len(deployment.dead_letters) >= len(broken)

    def progressed(before: int) -> Callable[[], bool]:
        return lambda: complete() or arrived() > before

    while not complete():
        if not await deployment.until(progressed(arrived()), quiet_s):
            break
    # Once the workers have committed every request, any duplicate has been read too.
    if not await deployment.settled():
        result.fail("the workers did not commit every request published within 60 s")

    decisions = {rid: deployment.decisions[rid] for rid in ids if rid in deployment.decisions}
    result.requests = len(ids)
    result.broken = len(broken)
    result.resent = resent
    result.decisions = len(decisions)
    result.duplicates = len(deployment.duplicates)
    result.outcomes = dict(Counter(outcome_of(d) for d in decisions.values()).most_common())
    undecided = len(ids) - len(decisions)
    if undecided:
        result.fail(f"{undecided} valid requests undecided")
    if result.duplicates:
        result.fail(f"{result.duplicates} duplicate decisions")
    strangers = len(deployment.decisions.keys() - wanted)
    if strangers:
        result.fail(f"{strangers} decisions for requests never published")

    served = [d for d in decisions.values() if d.topic == "served"]
    caps = cap_violations(served, campaigns)
    budgets = budget_violations(served, campaigns)
    result.cap_violations, result.budget_violations = len(caps), len(budgets)
    if caps:
        result.fail(f"caps exceeded: {caps[:3]}")
    if budgets:
        result.fail(f"budgets exceeded: {budgets[:3]}")

    spent = spend_by_campaign(served)
    mismatches = []
    for campaign_id in campaigns:
        with contextlib.suppress(Exception):  # an unreadable table is reported as such
            state = await deployment.state(campaign_id)
            held = state.spend.lifetime if state.spend else 0
            if held != spent.get(campaign_id, 0):
                mismatches.append(
                    f"{campaign_id}: tables {held} != served {spent.get(campaign_id, 0)}"
                )
            continue
        mismatches.append(f"{campaign_id}: tables unreadable")
    result.spend_mismatches = len(mismatches)
    if mismatches:
        result.fail(f"spend: {mismatches[:3]}")

    # Dead letters: each broken input once, with its reason, kept whole or as a marked prefix.
    letters: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for letter in deployment.dead_letters:
        letters[kept_bytes(letter.payload, "key") or b""].append(letter.payload)
    result.dead_letters = len(deployment.dead_letters)
    missing = 0
    wrong_reason: Counter[str] = Counter()
    for item in broken:
        found = letters.get(kept_bytes_of(item.key, "key"), [])
        match = next((kept for kept in found if keeps(kept, item)), None)
        if match is None:
            missing += 1
            continue
        found.remove(match)
        if not match["error"].startswith(item.reason):
            wrong_reason[f"{item.kind or item.reason}: {match['error'][:60]}"] += 1
    if missing:
        result.fail(f"{missing} broken inputs not dead-lettered as they were")
    if wrong_reason:
        result.fail(f"dead-lettered with another reason: {wrong_reason.most_common(3)}")
    if result.dead_letters != len(broken):
        result.fail(f"{result.dead_letters} dead letters for {len(broken)} broken inputs")
    result.lost = undecided + missing

    if reference:
        expected = reference_outcomes(
            (item for item in requests if fills(item.campaign_id)), campaigns
        )
        wrong = [
            rid for rid, outcome in expected.items()
            if rid in decisions and outcome_of(decisions[rid]) != outcome
        ]  # fmt: skip
        for campaign_id, rules in campaigns.items():
            lifetime = rules.budget.lifetime
            if rules.frequency_caps or lifetime is None or not fills(campaign_id):
                continue
            asked = [i for i in requests if i.campaign_id == campaign_id]
            got = sum(
                1
                for i in asked
                if i.context.request_id in decisions
                and outcome_of(decisions[i.context.request_id]) == "served"
            )
            cost = to_micros(rules.cpm) // 1000
            if got != min(len(asked), to_micros(lifetime) // cost):
                wrong.append(f"{campaign_id}: served {got} of {len(asked)}")
        result.model_mismatches = len(wrong)
        if wrong:
            result.fail(f"{len(wrong)} decisions differ from one-at-a-time: {wrong[:3]}")


def kept_bytes(letter: Mapping[str, Any], name: str) -> bytes | None:
    """A dead letter's `key` or `value` as it kept it (whole, or a prefix)."""
    kept = letter[name]
    return None if kept is None else base64.b64decode(kept)


def kept_bytes_of(original: bytes, name: str) -> bytes:
    """What a dead letter keeps of an original key or value (`streams.worker.outputs`)."""
    bound = KEPT_KEY_BYTES if name == "key" else KEPT_VALUE_BYTES
    return original[:bound]


def keeps(letter: Mapping[str, Any], item: Raw) -> bool:
    """Whether `letter` holds `item`: whole, or a prefix with the original size and hash."""
    for name, original in (("key", item.key), ("value", item.value)):
        kept = kept_bytes(letter, name)
        if original is None or kept is None or letter[f"{name}_size"] is None:
            if kept != original:
                return False
        elif (
            kept != kept_bytes_of(original, name)
            or letter[f"{name}_size"] != len(original)
            or letter[f"{name}_sha256"] != hashlib.sha256(original).hexdigest()
        ):
            return False
    return True


def assigned_partitions(worker: WorkerProcess, topic: str) -> set[int]:
    """The partitions of `topic` the worker was last assigned (from its log)."""
    lines = [
        line
        for line in worker.log_path.read_text(errors="replace").splitlines()
        if "Setting newly assigned partitions" in line
    ]
    if not lines:
        return set()
    pattern = rf"topic='{re.escape(topic)}', partition=(\d+)"
    return {int(p) for p in re.findall(pattern, lines[-1])}


async def first_decision_after(
    deployment: Deployment, since: float, where: Callable[[Decision], bool], timeout_s: float
) -> float | None:
    """Seconds from `since` (monotonic) to the first decision read after it matching `where`."""

    def arrival() -> float | None:
        times = [
            d.received_at
            for d in deployment.decisions.values()
            if d.received_at > since and where(d)
        ]
        return min(times) if times else None

    await deployment.until(lambda: arrival() is not None, timeout_s)
    found = arrival()
    return None if found is None else round(found - since, 3)


async def time_to_moved_decision(
    deployment: Deployment, result: Result, killed_at: float, moved: Callable[[Decision], bool]
) -> None:
    """Record the seconds from a kill (monotonic `killed_at`) to the first decision of the
    partitions the killed worker held (`moved`) read from now on, or fail if none comes."""
    mark = time.monotonic()
    recovery = await first_decision_after(deployment, mark, moved, 120)
    if recovery is None:
        result.fail("no decision on a partition of the killed worker after the kill")
    else:
        result.timings_s["kill_to_first_decision_on_moved_partition"] = round(
            recovery + mark - killed_at, 3
        )


def longest_stall(decisions: Iterable[Decision], start: float) -> float:
    """The longest time without a new decision, from `start` to the last decision."""
    times = sorted(d.received_at for d in decisions)
    gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
    return round(max(gaps, default=0.0), 3)


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)


@contextlib.asynccontextmanager
async def deployed(
    env: Env,
    name: str,
    *,
    bootstrap: str | None = None,
    redis_url: str | None = None,
    partitions: int = 8,
    store: str = "memory",
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Deployment]:
    deployment = Deployment(
        bootstrap or env.bootstrap,
        env.redis_url if redis_url is None else redis_url,
        env.root / name,
        partitions=partitions,
        store=store,
        extra_env=extra_env or {},
    )
    try:
        await deployment.start()
        yield deployment
    finally:
        for worker in deployment.workers:
            worker.stop(timeout_s=10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(deployment.stop(), 30)


async def offsets(deployment: Deployment) -> dict[str, Any]:
    """Per topic partition: committed offset of the group, last stable offset and high
    watermark (diagnostics for a stream that stopped)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    topics = deployment.topics
    names = [topics.requests, topics.leases, topics.served, topics.denied]
    found: dict[str, Any] = {}
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(deployment.name)
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    tps = [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in topic["partitions"]
    ]
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=deployment.bootstrap, isolation_level=isolation
        )
        await consumer.start()
        try:
            for tp, end in (await consumer.end_offsets(tps)).items():
                entry = found.setdefault(f"{tp.topic}[{tp.partition}]", {})
                entry[isolation] = end
                meta = committed.get(tp)
                entry["committed"] = None if meta is None else meta.offset
        finally:
            await consumer.stop()
    return found


async def routes(deployment: Deployment) -> dict[str, Any]:
    """Which worker each alive worker believes holds each table partition (diagnostics)."""
    found: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for worker in deployment.workers:
            if worker.running():
                with contextlib.suppress(httpx.HTTPError):
                    answer = await client.get(worker.url("/router/"))
                    found[worker.url("")] = answer.json()
    return found


def ad_url(env: Env) -> str:
    return env.vast.add(vast(inline()), name="ad.xml")


def rss_bytes(pid: int | None) -> int:
    """Resident memory of a process and its children (the worker's process group)."""
    if pid is None:
        return 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------
# 1. Scale-out: several workers, one killed, one added


async def scale_out(env: Env, size: Size) -> Result:
    """Two workers in one consumer group share 8 partitions of 8 campaigns (caps only,
    budget only, caps and a daily budget, caps with anonymous users uncapped). While
    requests flow (~35 s of publishing), a third worker joins (a rebalance), then the worker
    holding the most `ad-requests` partitions is SIGKILLed. Measured: the time from
    the kill to the first decision on one of its partitions (the broker notices the death
    after the 10 s session timeout, the group rebalances, the new owners restore the tables
    from their changelogs) and from starting the added worker to its being ready."""
    result = Result("scale_out", "3 workers on 8 partitions: one added, one SIGKILLed", size.name)
    partitions = 8
    async with deployed(env, "scale-out", partitions=partitions) as deployment:
        await deployment.add_worker()
        count = size.scale_requests
        campaigns = campaign_mix(ad_url(env), partitions, partitions, count // partitions)
        await deployment.load(*campaigns.values())
        requests = workload(random.Random(1), list(campaigns), count, users=max(count // 40, 10))
        published: dict[str, float] = {}
        # Steadily over ~35 s, so that the worker added and the worker killed both meet a
        # stream still flowing.
        publisher = asyncio.create_task(
            publish(deployment, requests, chunk=max(count // 150, 1), pause_s=0.2,
                    published_at=published)
        )  # fmt: skip

        await deployment.until(lambda: len(published) >= count // 5, 120)
        started = time.monotonic()
        await deployment.add_worker()
        result.timings_s["worker_added_to_ready"] = round(time.monotonic() - started, 3)
        result.measures["published_when_added"] = len(published)

        await deployment.until(lambda: len(published) >= count // 2, 120)
        topic = deployment.topics.requests
        victim = max(deployment.workers, key=lambda w: len(assigned_partitions(w, topic)))
        moved = assigned_partitions(victim, topic)
        result.measures["killed_worker_partitions"] = sorted(moved)
        killed_at = time.monotonic()
        victim.stop(signal.SIGKILL)
        decided_at_kill = len(deployment.decisions)
        result.measures["decided_at_kill"] = decided_at_kill
        # Whatever the victim committed before it died is read first; after that, a
        # decision on one of its partitions comes from the worker that took it over.
        await deployment.reader.caught_up()
        moved_campaigns = {c for c in campaigns if partition_of(c, partitions) in moved}
        await time_to_moved_decision(
            deployment, result, killed_at, lambda d: d.payload["campaign_id"] in moved_campaigns
        )
        if decided_at_kill >= count:
            result.fail("the kill was not mid-stream")
        result.measures["publishing_when_killed"] = not publisher.done()
        await publisher
        await audit(result, deployment, requests, campaigns)
        if result.spend_mismatches:
            result.measures["routes"] = await routes(deployment)
        result.measures["workers_alive"] = sum(w.running() for w in deployment.workers)
    return result


# ---------------------------------------------------------------------------------------
# 4. Input at volume, valid and broken mixed


def broken_inputs(rng: random.Random, count: int, now_ms: int) -> list[Raw]:
    """Every kind of broken input in turn, each with the DLQ reason it must get."""
    template = msgspec.json.decode(encode(request("camp-x", BASE_MS, "user-x")))
    context = template["context"]

    def variant(**changes: Any) -> bytes:
        return msgspec.json.encode({**template, **changes})

    makers: list[tuple[str, Callable[[], bytes | None]]] = [
        ("undecodable", lambda: b"\xff" + rng.randbytes(rng.randrange(1, 300))),
        ("undecodable", lambda: encode(request("camp-x", BASE_MS, "u"))[: rng.randrange(1, 150)]),
        ("invalid", lambda: variant(context={**context, "timestamp": "yesterday"})),
        ("invalid", lambda: variant(campaign_id=12345)),
        ("invalid", lambda: variant(context={**context, "cookies": ["user_id", "x"]})),
        ("invalid", lambda: variant(context={**context, "cookies": {"user_id": "x" * 10_000}})),
        ("schema_version", lambda: variant(schema=2, context={"v2": True})),
        ("schema_version", lambda: variant(schema=7)),
        ("invalid", lambda: variant(context={**context, "timestamp": 86_400_000})),  # 1970
        ("invalid", lambda: variant(context={**context, "timestamp": 7_258_118_400_000})),  # 2200
        # Within the schema's range, but a day ahead of the record's own timestamp.
        ("invalid", lambda: variant(context={**context, "timestamp": now_ms + 86_400_000})),
        ("oversize", lambda: b"[" * 70_000),
        ("undecodable", lambda: None),
    ]
    made = []
    for index in range(count):
        reason, make = makers[index % len(makers)]
        made.append(Raw(f"bad-{index}-{uuid.uuid4().hex[:6]}".encode(), make(), reason))
    return made


async def bad_input_at_volume(env: Env, size: Size) -> Result:
    """Valid requests with broken ones mixed in at random (random bytes, truncated JSON,
    wrong types, cookies over 4 KB, messages over 64 KiB, schema versions 2 and 7, event
    times in 1970, 2200 and a day ahead of the record, null values) and 2% of the valid ones
    re-sent, published as fast as the producer goes. Every broken input must reach the DLQ
    whole with its reason, every valid one be decided once, and the worker keep running."""
    result = Result("bad_input", "valid requests mixed with broken ones at volume", size.name)
    async with deployed(env, "volume", partitions=4) as deployment:
        count = size.volume_valid
        campaigns = campaign_mix(ad_url(env), 4, 4, count // 4, tag="v")
        await deployment.load(*campaigns.values())
        rng = random.Random(4)
        broken = broken_inputs(rng, size.volume_broken, int(time.time() * 1000))
        await mixed_stream(result, deployment, rng, campaigns, count, broken)
    return result


async def hostile_input(env: Env, size: Size) -> Result:
    """Fuzzing at volume: valid requests with generated hostile messages on both input topics
    (`tests.scale.fuzz`: random bytes, invalid UTF-8 at random places, truncated and deeply
    nested JSON, keys given twice in any object, extreme numbers, messages and keys near a
    megabyte; campaign records with unknown fields and budgets past what state holds, each
    keyed by a campaign in force). The worker must never exit, decide every valid request
    once by the rules in force, dead-letter every hostile message with its exact reason, and
    keep its memory bounded."""
    result = Result("hostile_input", "generated hostile messages among valid requests", size.name)
    async with deployed(env, "fuzz", partitions=4) as deployment:
        count = size.fuzz_valid
        campaigns = campaign_mix(ad_url(env), 4, 4, count // 4, tag="f")
        await deployment.load(*campaigns.values())
        rng = random.Random(12)
        requests_made = request_fuzz(rng, list(campaigns), huge_share=0.002)
        campaigns_made = campaign_fuzz(rng, list(campaigns.values()))
        hostile = [
            campaigns_made() if rng.random() < 0.05 else requests_made()
            for _ in range(size.fuzz_hostile)
        ]
        worker = deployment.workers[0]
        peak_rss = 0

        async def sample_rss() -> None:
            nonlocal peak_rss
            while True:
                peak_rss = max(peak_rss, rss_bytes(worker.pid))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample_rss())
        try:
            await mixed_stream(result, deployment, rng, campaigns, count, hostile)
        finally:
            sampler.cancel()
        result.measures["hostile_by_kind"] = dict(
            Counter(item.kind for item in hostile).most_common()
        )
        result.measures["worker_exits"] = sum(1 for w in deployment.workers if not w.running())
        result.measures["peak_rss_mb"] = round(peak_rss / 2**20, 1)
        if peak_rss > MAX_FUZZ_RSS_BYTES:
            result.fail(f"worker RSS peaked at {peak_rss / 2**20:.0f} MiB")
    return result


MAX_FUZZ_RSS_BYTES = 1 << 30
"""A generous bound on a fuzzed worker's memory (the measured peak is in docs/reliability.md)."""


async def mixed_stream(
    result: Result,
    deployment: Deployment,
    rng: random.Random,
    campaigns: Mapping[str, Campaign],
    count: int,
    broken: Sequence[Raw],
) -> None:
    """Publish `count` valid requests with `broken` placed among them at random and 2% of the
    valid ones re-sent a little after their first, as fast as the producer goes; audit."""
    requests = workload(rng, list(campaigns), count, users=max(count // 30, 10))
    resent = rng.sample(requests, count // 50)
    placed: list[tuple[float, Item]] = [(float(i), item) for i, item in enumerate(requests)]
    placed += [(rng.uniform(0, count), raw) for raw in broken]
    position = {item.context.request_id: i for i, item in enumerate(requests)}
    placed += [(position[item.context.request_id] + rng.uniform(1, 200), item) for item in resent]
    placed.sort(key=lambda pair: pair[0])
    started = time.monotonic()
    await publish(deployment, [item for _, item in placed], chunk=500, pause_s=0.0)
    await audit(result, deployment, requests, campaigns, broken=broken, resent=len(resent))
    result.timings_s["published_to_all_decided"] = round(time.monotonic() - started, 3)
    result.measures["dead_letter_reasons"] = dict(
        Counter(letter.payload["error"].split(":")[0] for letter in deployment.dead_letters)
    )
    alive = all(w.running() for w in deployment.workers)
    result.measures["worker_alive"] = alive
    if not alive:
        result.fail("the worker stopped")


# ---------------------------------------------------------------------------------------
# 5. Hostile upstreams under load, with the SSRF guard on

CHAIN_TIMEOUT_S = 1.0
STALL_SLACK_S = 2.5
"""How far past the chain deadline the longest pause between decisions may run on a busy
two-core machine (commit interval, batch assembly, scheduling)."""

BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE VAST [<!ENTITY a "aaaaaaaaaa">'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    '<VAST version="4.2"><Ad id="x"><InLine><AdSystem>&c;</AdSystem><AdTitle>&c;</AdTitle>'
    "<Impression>http://pixels.invalid/i</Impression><Creatives/></InLine></Ad></VAST>"
)


async def endless_body(request: web.Request) -> web.StreamResponse:
    """A chunked body that never ends (the body cap must cut it)."""
    response = web.StreamResponse(headers={"Content-Type": "application/xml"})
    await response.prepare(request)
    await response.write(b'<VAST version="4.0">')
    chunk = b"<!--" + b"x" * 65_536 + b"-->"
    with contextlib.suppress(ConnectionError, RuntimeError):
        while True:
            await response.write(chunk)
    return response


def hostile_routes(server: VastServer) -> dict[str, tuple[str, str | None]]:
    """Upstream URL -> the (outcome, IAB code) a request to it must get."""
    good = server.add(vast(inline()), name="good.xml")
    loopback_two = good.replace("127.0.0.1", "127.0.0.2")
    loop_a = server.add(b"", name="loop-a.xml")
    loop_b = server.add(vast(wrapper(loop_a)), name="loop-b.xml")
    server.set(loop_a, vast(wrapper(loop_b)))
    deep = good
    for _ in range(7):
        deep = server.add(vast(wrapper(deep)), name="deep.xml")
    self_redirect = server.add(b"", status=302, name="self.xml")
    server.set(self_redirect, b"", status=302, headers={"Location": self_redirect})
    return {
        good: ("served", None),
        server.add(vast(inline()), delay=5, name="slow.xml"): ("upstream_error", "301"),
        server.add(handler=endless_body, name="endless.xml"): ("upstream_error", "100"),
        server.add(BILLION_LAUGHS, name="entities.xml"): ("upstream_error", "100"),
        loop_a: ("upstream_error", "302"),
        deep: ("upstream_error", "302"),
        self_redirect: ("upstream_error", "301"),
        server.add(b"", status=302, headers={"Location": loopback_two}, name="to-lo.xml"): (
            "upstream_error",
            "301",
        ),
        server.add(
            b"", status=302, headers={"Location": "http://169.254.169.254/latest/"}, name="ll.xml"
        ): ("upstream_error", "301"),
        server.add(vast(wrapper(loopback_two)), name="wrapped-lo.xml"): ("upstream_error", "301"),
    }


async def hostile_upstreams(env: Env, size: Size) -> Result:
    """Half the traffic goes to campaigns whose VAST upstream is hostile, with the SSRF guard
    on (only 127.0.0.1, the test server, allowed): slow (5 s, past the 1 s chain deadline),
    an endless chunked body, a DOCTYPE with nested entities, wrappers pointing at each other,
    a chain of 7 wrappers, an HTTP redirect to itself, redirects to 127.0.0.2 and to
    169.254.169.254, a wrapper pointing at 127.0.0.2. Each must be denied `upstream_error`
    with its IAB code (100, 301, 302); the well-behaved half must all be served. Measured:
    the longest pause between decisions (must stay within the chain deadline plus 2.5 s of
    scheduling slack) and decision latency with and without the hostile half. A batch
    commits as a whole and waits for its slowest upstream, so under hostile traffic the
    well-behaved requests share the hostile ones' latency (bounded by the chain deadline per
    batch), not their outcome."""
    result = Result(
        "hostile_upstreams",
        "slow, endless, entity-laden, looping and SSRF upstreams under load",
        size.name,
    )
    guard = {
        "ADSTREAM_BLOCK_PRIVATE_ADDRESSES": "1",
        "ADSTREAM_ALLOWED_NETWORKS": "127.0.0.1/32",  # the test upstream itself
        "ADSTREAM_CHAIN_TIMEOUT_S": str(CHAIN_TIMEOUT_S),
        "ADSTREAM_HOP_TIMEOUT_S": str(CHAIN_TIMEOUT_S / 2),
    }
    async with deployed(env, "hostile", partitions=4, extra_env=guard) as deployment:
        routes = hostile_routes(env.vast)
        expected: dict[str, tuple[str, str | None]] = {}
        campaigns: dict[str, Campaign] = {}
        for index, (url, outcome) in enumerate(routes.items()):
            # Two campaigns on the good upstream: half of all traffic is well-behaved.
            for copy in range(2 if outcome[0] == "served" else 1):
                rules = campaign(url, campaign_id=f"h{index}-{copy}-{uuid.uuid4().hex[:6]}")
                campaigns[rules.campaign_id] = rules
                expected[rules.campaign_id] = outcome
        await deployment.load(*campaigns.values())
        good = [c for c, outcome in expected.items() if outcome[0] == "served"]
        bad = [c for c in expected if c not in good]
        rng = random.Random(5)
        count = size.hostile_requests
        requests = [
            request(
                rng.choice(good if index % 2 else bad),
                BASE_MS + index * 1000,
                f"user-{rng.randrange(count // 5 + 1)}",
            )
            for index in range(count)
        ]
        published: dict[str, float] = {}
        started = time.monotonic()
        await publish(deployment, requests, chunk=100, pause_s=0.1, published_at=published)
        await audit(result, deployment, requests, campaigns, fills=lambda c: c in good)
        # Undecided requests are already audit's failures; the rest are looked at here.
        decided = (deployment.decisions.get(r.context.request_id) for r in requests)
        decisions = [d for d in decided if d is not None]
        wrong = Counter(
            (d.payload["campaign_id"][:3], outcome_of(d), d.payload.get("detail"))
            for d in decisions
            if (outcome_of(d), d.payload.get("detail")) != expected[d.payload["campaign_id"]]
        )
        if wrong:
            result.fail(f"unexpected outcomes: {dict(wrong.most_common(5))}")
        latency = {
            kind: [
                d.received_at - published[d.payload["request_id"]]
                for d in decisions
                if (d.payload["campaign_id"] in good) == (kind == "well_behaved")
            ]
            for kind in ("well_behaved", "hostile")
        }
        for kind, values in latency.items():
            result.timings_s[f"{kind}_latency_p50"] = percentile(values, 0.5)
            result.timings_s[f"{kind}_latency_p99"] = percentile(values, 0.99)
            result.timings_s[f"{kind}_latency_max"] = percentile(values, 1.0)
        # The same well-behaved campaigns alone, for comparison: a batch becomes visible when
        # it commits, and it waits for its slowest upstream (at most the chain deadline).
        alone = [
            request(rng.choice(good), BASE_MS + (count + i) * 1000, f"user-{i}")
            for i in range(count // 4)
        ]
        await publish(deployment, alone, chunk=50, pause_s=0.1, published_at=published)
        await deployment.decided([r.context.request_id for r in alone], 120)
        values = [
            deployment.decisions[r.context.request_id].received_at - published[r.context.request_id]
            for r in alone
        ]
        result.timings_s["well_behaved_alone_latency_p50"] = percentile(values, 0.5)
        result.timings_s["well_behaved_alone_latency_p99"] = percentile(values, 0.99)
        result.measures["throughput_with_hostile_per_s"] = round(
            count / (max(d.received_at for d in decisions) - started), 1
        )
        stall = longest_stall(decisions, started)
        result.timings_s["longest_pause_between_decisions"] = stall
        result.measures["chain_deadline_s"] = CHAIN_TIMEOUT_S
        result.measures["iab_codes"] = dict(
            Counter(str(d.payload.get("detail")) for d in decisions if d.topic == "denied")
        )
        if stall > CHAIN_TIMEOUT_S + STALL_SLACK_S:
            result.fail(f"decisions paused {stall} s (chain deadline {CHAIN_TIMEOUT_S} s)")
        if not all(w.running() for w in deployment.workers):
            result.fail("a worker stopped")
    return result


# ---------------------------------------------------------------------------------------
# 3. Redis absent from the start, started, stopped mid-stream, restarted


async def redis_values(url: str, keys: Sequence[str]) -> list[bytes | None]:
    client = aioredis.Redis.from_url(url)
    try:
        values = await client.mget(keys) if keys else []
        return [v.encode() if isinstance(v, str) else v for v in values]
    finally:
        await client.aclose()


async def redis_keys(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        count: int = await client.dbsize()
        return count
    finally:
        await client.aclose()


async def metric(worker: WorkerProcess, name: str) -> float:
    """The sum of a Prometheus metric's samples on a worker's /metrics page."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(worker.url("/metrics"))).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.split("{")[0].split(" ")[0] == name
    )


async def redis_outage(env: Env, size: Size) -> Result:
    """A private Redis is down when the worker starts; a quarter of the stream is decided
    without it, then Redis starts (the cache must fill), is stopped in the middle of the
    third quarter, and started again empty on the same port for the last quarter (the cache
    must refill). Decisions must equal the one-at-a-time reference throughout: Redis never
    takes part in a decision."""
    result = Result(
        "redis_outage", "Redis absent at start, started, stopped mid-stream, restarted", size.name
    )
    server = RedisServer(data_dir=env.root / "redis", log_dir=env.root / "redis-logs")
    await asyncio.to_thread(server.start)  # only to fix its port: it is down when workers start
    await asyncio.to_thread(server.stop)
    try:
        async with deployed(env, "redis", redis_url=server.url, partitions=4) as deployment:
            prefix = f"{deployment.name}-"
            count = size.redis_requests
            campaigns = campaign_mix(ad_url(env), 4, 4, count // 4, tag="r")
            await deployment.load(*campaigns.values())
            requests = workload(random.Random(3), list(campaigns), count, users=count // 30 + 1)
            quarter = count // 4
            phases = [requests[i * quarter : (i + 1) * quarter] for i in range(3)]
            phases.append(requests[3 * quarter :])

            async def decide(part: Sequence[AdRequest]) -> list[Decision]:
                await publish(deployment, part, chunk=50, pause_s=0.05)
                return await deployment.decided([r.context.request_id for r in part], 120)

            await decide(phases[0])  # Redis absent from the start
            await asyncio.to_thread(server.start)
            started = time.monotonic()
            second = await decide(phases[1])
            filled = await cache_filled(server.url, prefix, second, campaigns, timeout_s=15)
            result.timings_s["redis_started_to_cache_filled"] = round(time.monotonic() - started, 3)
            if not filled:
                result.fail("the cache did not fill once Redis was started")
            result.measures["redis_keys_after_start"] = await redis_keys(server.url)

            publisher = asyncio.create_task(publish(deployment, phases[2], chunk=25, pause_s=0.1))
            third = {r.context.request_id for r in phases[2]}
            await deployment.until(
                lambda: len(third & deployment.decisions.keys()) >= len(third) // 3, 120
            )
            await asyncio.to_thread(server.stop)  # mid-stream
            stopped = time.monotonic()
            # Mid-stream means decisions still to come; on a busy machine the publisher may
            # be done long before the worker is.
            if len(third & deployment.decisions.keys()) >= len(third):
                result.fail("Redis was not stopped mid-stream")
            await publisher
            await deployment.decided(third, 120)
            result.timings_s["stop_to_third_quarter_decided"] = round(time.monotonic() - stopped, 3)

            await asyncio.to_thread(server.start)  # back, empty, same port
            restarted = time.monotonic()
            last = await decide(phases[3])
            refilled = await cache_filled(server.url, prefix, last, campaigns, timeout_s=15)
            result.timings_s["redis_restarted_to_cache_refilled"] = round(
                time.monotonic() - restarted, 3
            )
            if not refilled:
                result.fail("the cache did not refill after Redis came back")
            result.measures["redis_keys_after_restart"] = await redis_keys(server.url)
            result.measures["redis_write_errors"] = await metric(
                deployment.workers[0], "adstream_redis_errors_total"
            )
            await audit(result, deployment, requests, campaigns)
            if not all(w.running() for w in deployment.workers):
                result.fail("a worker stopped")
    finally:
        await asyncio.to_thread(server.stop)
    return result


async def cache_filled(
    url: str,
    prefix: str,
    decisions: Sequence[Decision],
    campaigns: Mapping[str, Campaign],
    timeout_s: float,
) -> bool:
    """Whether Redis holds, for every user served in `decisions` by a capped campaign, the
    cap state with that impression, and every serving campaign's spend (waiting up to
    `timeout_s`)."""
    served = [d.payload for d in decisions if d.topic == "served"]
    caps = {
        cap_key(prefix, p["campaign_id"], p["user_id"]): p["timestamp"]
        for p in served
        if p["user_id"] is not None and campaigns[p["campaign_id"]].frequency_caps
    }
    spends = [spend_key(prefix, c) for c in {p["campaign_id"] for p in served}]
    deadline = time.monotonic() + timeout_s
    client = aioredis.Redis.from_url(url)
    while True:
        cap_values = await redis_values(url, list(caps))
        try:
            spend_views = [await cached_spend(client, key) for key in spends]
        except (RedisError, OSError):
            spend_views = []
        held = (
            all(
                value is not None and t in msgspec.json.decode(value, type=CapView).times
                for value, t in zip(cap_values, caps.values(), strict=True)
            )
            and len(spend_views) == len(spends)
            and all(sum(view.lifetime for view in views) > 0 for views in spend_views)
        )
        if held or time.monotonic() > deadline:
            await client.aclose()
            return held
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------------------------------
# 2. The broker stopped and started again mid-stream


@dataclass
class Supervisor:
    """Restarts any worker that exits, on its own data directory, as systemd or Kubernetes
    would; a worker that cannot start yet (the broker is away) is tried again."""

    deployment: Deployment
    exit_codes: list[int | None] = field(default_factory=list)
    restarted_at: list[float] = field(default_factory=list)

    async def run(self) -> None:
        current = dict(enumerate(self.deployment.workers))
        while True:
            for index, worker in list(current.items()):
                if worker.running():
                    continue
                self.exit_codes.append(None if worker.proc is None else worker.proc.returncode)
                while True:
                    try:
                        current[index] = await self.deployment.add_worker(index=index)
                        break
                    except WorkerFailed:
                        await asyncio.sleep(1)
                self.restarted_at.append(time.monotonic())
            await asyncio.sleep(0.5)


async def broker_restart(env: Env, size: Size) -> Result:
    """A private Kafka broker (KRaft, one node) is stopped with SIGTERM in the middle of the
    stream and started again on the same ports and data directory ~3 s later, while the edge
    keeps publishing. A worker either rides the outage out (its clients reconnect) or, when
    a transactional send or commit was in flight, exits (status 70 or Faust's 1) and is
    restarted by a supervisor (here the scenario, as systemd or Kubernetes would); either
    way the invariants must hold. Measured: the outage and the time from the broker's return
    to the next decision."""
    result = Result(
        "broker_restart", "the broker stopped and started again mid-stream (same data)", size.name
    )
    broker = KafkaBroker(data_dir=env.root / "kafka", log_dir=env.root / "kafka-logs")
    await asyncio.to_thread(broker.start)
    try:
        bootstrap = broker.bootstrap_servers
        async with deployed(env, "broker", bootstrap=bootstrap, partitions=4) as deployment:
            count = size.broker_requests
            campaigns = campaign_mix(ad_url(env), 4, 4, count // 4, tag="b")
            await deployment.load(*campaigns.values())
            requests = workload(random.Random(2), list(campaigns), count, users=count // 30 + 1)
            publisher = asyncio.create_task(
                publish(deployment, requests, chunk=max(count // 100, 1), pause_s=0.2)
            )
            await deployment.until(lambda: len(deployment.decisions) >= count // 3, 120)
            result.measures["decided_when_stopped"] = len(deployment.decisions)
            supervisor = Supervisor(deployment)
            supervising = asyncio.create_task(supervisor.run())
            stopping = time.monotonic()
            await asyncio.to_thread(broker.stop)
            stopped = time.monotonic()
            result.timings_s["broker_stop"] = round(stopped - stopping, 3)
            await asyncio.sleep(3)  # the workers and clients find nobody there
            await asyncio.to_thread(broker.start)
            back = time.monotonic()
            result.timings_s["broker_down"] = round(back - stopping, 3)
            decided_when_back = len(deployment.decisions)
            if decided_when_back >= count:
                result.fail("the broker was not stopped mid-stream")
            await deployment.reader.caught_up(60)
            mark = time.monotonic()
            first = await first_decision_after(deployment, mark, lambda d: True, 180)
            if first is None:
                result.fail("no decision after the broker came back")
            else:
                result.timings_s["broker_back_to_first_decision"] = round(first + mark - back, 3)
            await publisher
            await audit(result, deployment, requests, campaigns, quiet_s=180)
            if result.lost:
                result.measures["offsets"] = await offsets(deployment)
            supervising.cancel()
            await asyncio.gather(supervising, return_exceptions=True)
            result.timings_s["broker_back_to_all_decided"] = round(
                max(d.received_at for d in deployment.decisions.values()) - back, 3
            )
            result.measures["worker_exit_codes"] = supervisor.exit_codes
            result.measures["worker_restarts"] = len(supervisor.restarted_at)
            if supervisor.restarted_at:
                result.timings_s["broker_back_to_worker_restarted"] = round(
                    supervisor.restarted_at[-1] - back, 3
                )
            if any(code not in (FAILED_EXIT, 1) for code in supervisor.exit_codes):
                result.fail(f"a worker died unexpectedly: {supervisor.exit_codes}")
    finally:
        await asyncio.to_thread(broker.stop)
    return result


# ---------------------------------------------------------------------------------------
# 6. Recovery with big state


async def decided_at_least(deployment: Deployment, count: int, timeout_s: float) -> bool:
    return await deployment.until(lambda: len(deployment.decisions) >= count, timeout_s)


LEAN_FIELDS = ("request_id", "campaign_id", "user_id", "timestamp", "cost", "reason")


async def big_state(env: Env, size: Size) -> Result:
    """One worker (RocksDB store) builds `state_keys` (user, campaign) frequency entries:
    each request a new pair, served, cap 1 per day. It is SIGKILLed under load (requests of
    new users streaming in, which must be served) and a worker with the RocksDB store is
    started on the same data directory; that one is SIGKILLed in turn, under load too, and a
    worker with the memory store takes its place. Before each restart, requests for a sample
    of the old pairs are published (must be capped: the state came back). Every request is
    decided exactly once. The RocksDB worker restores only the changelog after the offsets
    its files hold; the memory store restores everything, which is why one build serves
    both. Measured: seconds from each kill to ready and to the first
    decision, resident memory per key of each store, RocksDB disk per key."""
    keys = size.state_keys
    result = Result(
        "big_state",
        f"{keys:,} (user, campaign) keys: SIGKILL and restart, RocksDB and memory",
        size.name,
    )
    deployment = Deployment(
        env.bootstrap,
        env.redis_url,
        env.root / "state",
        partitions=4,
        store="rocksdb",
        # The upstream is not under test here, and every key must be served: deadlines that
        # a pause of this busy process (it reads every decision) cannot reach.
        extra_env={"ADSTREAM_HOP_TIMEOUT_S": "5", "ADSTREAM_CHAIN_TIMEOUT_S": "10"},
    )
    deployment.reader.keep_fields = LEAN_FIELDS
    try:
        await deployment.start()
        rss_empty = rss_bytes(deployment.workers[0].pid)
        ids = campaign_ids(4, 4, "s")
        campaigns = {c: campaign(ad_url(env), campaign_id=c, caps=[(1, 86_400)]) for c in ids}
        await deployment.load(*campaigns.values())
        sample = await build_state(deployment, result, ids, keys)
        result.measures["rocksdb_disk_bytes_per_key"] = round(
            disk_bytes(deployment.root / "worker-0") / keys, 1
        )
        rss_full = rss_bytes(deployment.workers[0].pid)
        result.measures["rocksdb_rss_bytes_per_key"] = round((rss_full - rss_empty) / keys, 1)
        result.measures["rocksdb_rss_mb"] = round(rss_full / 1e6, 1)
        for round_, store in enumerate(("rocksdb", "memory"), start=1):
            later = BASE_MS + BUILD_SPAN_MS + round_ * 60_000
            await restart_with(deployment, result, store, sample, ids, later)
            restarted = deployment.alive_worker()
            result.measures[f"{store}_rss_mb_after_restore"] = round(
                rss_bytes(restarted.pid) / 1e6, 1
            )
            if store == "memory":
                result.measures["memory_rss_bytes_per_key"] = round(
                    (rss_bytes(restarted.pid) - rss_empty) / keys, 1
                )
        sent = keys + 4 * len(sample)
        if not await deployment.settled():
            result.fail("the worker did not commit every request published within 60 s")
        result.requests += sent
        result.decisions += len(deployment.decisions)
        result.duplicates += len(deployment.duplicates)
        result.lost += sent - len(deployment.decisions)
        if result.duplicates:
            result.fail(f"{result.duplicates} duplicate decisions across the restarts")
        if result.lost:
            result.fail(f"{result.lost} of {sent:,} requests never decided")
        spent = spend_by_campaign(d for d in deployment.decisions.values() if d.reason is None)
        for campaign_id in campaigns:
            state = await deployment.state(campaign_id)
            if (state.spend.lifetime if state.spend else 0) != spent.get(campaign_id, 0):
                result.spend_mismatches += 1
                result.fail(f"{campaign_id} spend in tables differs from served")
        result.measures["keys"] = keys
    finally:
        gc.unfreeze()
        for worker in deployment.workers:
            worker.stop(timeout_s=10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(deployment.stop(), 30)
    return result


BUILD_SPAN_MS = 30 * 60_000


async def build_state(
    deployment: Deployment, result: Result, ids: list[str], keys: int
) -> list[AdRequest]:
    """Publish `keys` requests, each a new (user, campaign) pair spread over BUILD_SPAN_MS
    of event time, wait until all are served, and return a sample of ~500 of them."""
    # Made and published in chunks, so a million of them never sit in memory at once.
    chunk = 5_000
    sample: list[AdRequest] = []
    started = time.monotonic()
    for start in range(0, keys, chunk):
        part = [
            request(ids[i % 4], BASE_MS + i * BUILD_SPAN_MS // keys, f"big-{i // 4}")
            for i in range(start, min(start + chunk, keys))
        ]
        sample += part[:: max(keys // 500, 1)]
        await deployment.publish(*part)
        # Keep the backlog bounded: the reader holds what it reads, lean as it is.
        await decided_at_least(deployment, start - 4 * chunk, 600)
        # What this process holds (up to a million decisions) is left out of its garbage
        # collections from now on: a full one over it pauses the VAST upstream served from
        # here longer than the worker's hop deadline, and the requests then in flight fail.
        gc.freeze()
    await deployment.until(lambda: len(deployment.decisions) >= keys, 900)
    build_s = time.monotonic() - started
    result.timings_s["build_state"] = round(build_s, 1)
    result.measures["build_decisions_per_s"] = round(keys / build_s, 1)
    served = sum(1 for d in deployment.decisions.values() if d.reason is None)
    if len(deployment.decisions) != keys or served != keys or deployment.duplicates:
        result.fail(
            f"build: {len(deployment.decisions)} decisions, {served} served, "
            f"{len(deployment.duplicates)} duplicates for {keys} requests"
        )
    await asyncio.sleep(1)
    return sample


async def restart_with(
    deployment: Deployment,
    result: Result,
    store: str,
    sample: list[AdRequest],
    ids: list[str],
    later: int,
) -> None:
    """SIGKILL the running worker under load, while requests of as many new users as there
    are sampled keys (served) stream in; then publish a request for each sampled key (a
    second impression within the day: capped), start a worker with `store` on the same data
    directory and check each of those decisions."""
    fresh = [request(ids[i % 4], later + i, f"fresh-{store}-{i}") for i in range(len(sample))]
    after_kill = later + len(fresh)
    again = [request(r.campaign_id, after_kill + i, r.context.cookies["user_id"])
             for i, r in enumerate(sample)]  # fmt: skip
    fresh_ids = [r.context.request_id for r in fresh]

    def fresh_decided() -> int:
        return sum(1 for r in fresh_ids if r in deployment.decisions)

    publisher = asyncio.create_task(publish_steadily(deployment, fresh))
    await deployment.until(lambda: fresh_decided() >= len(fresh) // 4, 120)
    deployment.alive_worker().stop(signal.SIGKILL)
    killed = time.monotonic()
    in_flight = len(fresh) - fresh_decided()
    result.measures[f"{store}_undecided_at_kill"] = in_flight
    if not in_flight:
        result.fail(f"{store}: every request was decided before the kill, not under load")
    await publisher
    await deployment.publish(*again)
    deployment.store = store
    # A full restore (the memory store) reads two records per key (`seen`, `frequency`).
    keys = len(deployment.decisions)
    await deployment.add_worker(index=0, ready_timeout_s=90 + keys / 1_000)
    ready = time.monotonic()
    result.timings_s[f"{store}_kill_to_ready"] = round(ready - killed, 3)
    first = await first_decision_after(
        deployment, killed, lambda d: d.payload["timestamp"] >= after_kill, 300
    )
    if first is not None:
        result.timings_s[f"{store}_kill_to_first_decision"] = first
    wanted = [r.context.request_id for r in again + fresh]
    if not await deployment.until(lambda: all(r in deployment.decisions for r in wanted), 300):
        undecided = [r for r in again + fresh if r.context.request_id not in deployment.decisions]
        result.fail(
            f"{store}: {len(undecided)} of {len(wanted)} requests published around the restart "
            f"undecided 300 s after ready (after a restore of ~{2 * keys:,} records)"
        )
        result.measures[f"{store}_undecided_sample"] = [r.context.request_id for r in undecided[:5]]
        return
    decided = [deployment.decisions[r] for r in wanted]
    result.timings_s[f"{store}_ready_to_all_decided"] = round(
        max(d.received_at for d in decided) - ready, 3
    )
    wrong_again = sum(1 for d in decided[: len(again)] if d.reason != "frequency_cap")
    wrong_fresh = sum(1 for d in decided[len(again) :] if d.reason is not None)
    if wrong_again or wrong_fresh:
        result.fail(
            f"{store}: after the restart {wrong_again} of {len(again)} capped keys served "
            f"again, {wrong_fresh} of {len(fresh)} new users not served"
        )


async def publish_steadily(
    deployment: Deployment, requests: Sequence[AdRequest], chunk: int = 20
) -> None:
    """Publish `requests` a chunk at a time, a little apart: a stream, not one burst."""
    for start in range(0, len(requests), chunk):
        await deployment.publish(*requests[start : start + chunk])
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------
# 8. The worker holding leases SIGKILLed mid-stream


async def lease_holder_killed(env: Env, size: Size) -> Result:
    """Two workers share 8 partitions; four budget-only campaigns (uncapped, anonymous users
    served too) with budgets of about 60% of their requests, three lifetime and one daily,
    so that every partition decides every campaign from a lease and the banks pool what is
    left at the end. When 40% of the stream is published, the worker holding the most
    `ad-requests` partitions (their leases, and the banks of the campaigns keyed to them) is
    SIGKILLed; requests keep coming. Checked beyond the usual audit: `adstream audit`'s
    verifier over the five topics (every served decision within its partition's lease,
    every lease within the budget) and nothing stranded: each budget spent down to less
    than one impression's cost (the lifetime campaigns serve exactly what their budgets
    hold, as one-at-a-time would). Measured: the kill to the first decision on a partition
    of the killed worker."""
    result = Result(
        "lease_holder_killed",
        "2 workers, small budgets: the worker holding leases SIGKILLed mid-stream",
        size.name,
    )
    partitions = 8
    async with deployed(env, "lease-kill", partitions=partitions) as deployment:
        await deployment.add_worker()
        count = size.lease_requests
        url = ad_url(env)
        # Keyed to every other partition: whichever half the killed worker holds, it holds
        # the banks of two campaigns.
        ids = campaign_ids(partitions, partitions, "lease")[::2]
        budget = from_micros(count // len(ids) * 6 // 10 * 2500)  # 60% of its requests
        campaigns = {
            campaign_id: campaign(
                url,
                campaign_id=campaign_id,
                lifetime=None if index == 3 else budget,
                daily=budget if index == 3 else None,
                anonymous_policy="uncapped",
            )
            for index, campaign_id in enumerate(ids)
        }
        await deployment.load(*campaigns.values())
        # All in one UTC day: the daily budget is spent down on it.
        requests = workload(random.Random(8), ids, count, users=max(count // 20, 10))
        published: dict[str, float] = {}
        publisher = asyncio.create_task(
            publish(deployment, requests, chunk=max(count // 150, 1), pause_s=0.2,
                    published_at=published)
        )  # fmt: skip

        await deployment.until(lambda: len(published) >= count * 4 // 10, 120)
        topic = deployment.topics.requests
        victim = max(deployment.workers, key=lambda w: len(assigned_partitions(w, topic)))
        moved = assigned_partitions(victim, topic)
        result.measures["killed_worker_partitions"] = sorted(moved)
        result.measures["killed_worker_banks"] = sum(
            partition_of(c, partitions) in moved for c in ids
        )
        killed_at = time.monotonic()
        victim.stop(signal.SIGKILL)
        decided_at_kill = len(deployment.decisions)
        result.measures["decided_at_kill"] = decided_at_kill
        result.measures["published_at_kill"] = len(published)
        if decided_at_kill >= count:
            result.fail("the kill was not mid-stream")
        await deployment.reader.caught_up()
        # `ad-requests` is keyed by user (anonymous requests by their id).
        on_moved = {
            i.context.request_id
            for i in requests
            if partition_of(user_key(i.context), partitions) in moved
        }
        await time_to_moved_decision(
            deployment, result, killed_at, lambda d: d.payload["request_id"] in on_moved
        )
        await publisher
        await audit(result, deployment, requests, campaigns)
        await audit_leases(result, deployment)
        served = [d for d in deployment.decisions.values() if d.topic == "served"]
        lifetime, daily = spend_by_campaign(served), spend_by_day(served)
        left = {}
        for campaign_id, rules in campaigns.items():
            spent = lifetime.get(campaign_id, 0)
            if rules.budget.daily is not None:
                spent = max((v for (c, _), v in daily.items() if c == campaign_id), default=0)
            left[campaign_id] = to_micros(budget) - spent
        result.measures["budget_left_micros"] = left
        stranded = {c: micros for c, micros in left.items() if micros >= 2500}
        if stranded:
            result.fail(f"budgets not spent down to one impression: {stranded}")
    return result


async def audit_leases(result: Result, deployment: Deployment) -> None:
    """`adstream audit`'s verifier over the deployment's topics, into `result`."""
    auditor = Auditor()
    await replay(deployment.bootstrap, deployment.topics, auditor)
    summary = auditor.finish().summary
    result.measures["audit_records"] = summary.records
    if summary.violations:
        kinds = summary.by_kind()
        result.fail(f"audit: {kinds}: {[v.detail for v in summary.violations[:3]]}")


# ---------------------------------------------------------------------------------------
# Registry

Scenario = Callable[[Env, Size], Awaitable[Result]]

SCENARIOS: dict[str, Scenario] = {
    "scale_out": scale_out,
    "bad_input": bad_input_at_volume,
    "hostile_input": hostile_input,
    "hostile_upstreams": hostile_upstreams,
    "redis_outage": redis_outage,
    "broker_restart": broker_restart,
    "big_state": big_state,
    "lease_holder_killed": lease_holder_killed,
}


async def run(name: str, env: Env, size: Size) -> Result:
    """One scenario, timed; a scenario that crashes is a failed result, not an exception."""
    started = time.monotonic()
    try:
        result = await SCENARIOS[name](env, size)
    except Exception as exc:
        detail = "".join(traceback.format_exception(exc)[-4:])
        result = Result(name, name, size.name, problems=[f"crashed: {detail}"])
    result.seconds = round(time.monotonic() - started, 1)
    return result


def summary(results: Iterable[Result]) -> str:
    return "\n".join(
        f"{r.scenario}: {'ok' if r.ok else 'FAILED'} {r.requests} requests, "
        f"{r.decisions} decisions, {r.duplicates} duplicates, lost {r.lost}, "
        f"timings {r.timings_s}, {r.seconds:.1f} s"
        for r in results
    )


__all__ = ["SCENARIOS", "SIZES", "Env", "Result", "Size", "check"]
