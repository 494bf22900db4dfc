"""Scale-out and fault scenarios against a real broker, Redis and HTTP upstream (issue 6).

One place for each scenario: `tests/scale/` runs them at the small size (and the full size
with `-m full`), `python -m bench.reliability` runs them all and writes `docs/reliability.md`.

Every scenario publishes a stream, does something unkind to the deployment in the middle of
it, reads every decision back with a read_committed consumer and audits (`audit`):

- exactly one decision per valid request, no duplicates, no decision for anything else;
- no frequency cap and no budget exceeded (recomputed from the served decisions alone);
- the spend in the worker's tables equal to the sum of the served costs, to the micro;
- every broken input in the DLQ with its reason; nothing lost;
- where the outcome does not depend on how the route stage interleaves users (campaigns with
  caps but no budget; budget-only uncapped campaigns by count), the decisions equal those of
  a one-at-a-time reference: the fault changed no decision.

A scenario returns a `Result`; anything that broke an invariant is listed in its `problems`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import re
import signal
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiokafka.partitioner import murmur2

from models.codec import encode
from models.events import AdRequest, Campaign
from models.money import to_micros
from streams.decisions import Decision
from streams.invariants import budget_violations, cap_violations, spend_by_campaign
from streams.worker_process import WorkerProcess
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request
from tests.upstream import VastServer, inline, vast

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


SMALL = Size(
    "small",
    scale_requests=2_400,
    volume_valid=3_000,
    volume_broken=600,
    hostile_requests=1_200,
    redis_requests=1_200,
    broker_requests=1_500,
    state_keys=20_000,
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


@dataclass
class Raw:
    """A message published as it is (broken input), with the DLQ reason it must get."""

    key: bytes
    value: bytes | None
    reason: str


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
    producer = deployment._producer
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        requests = [item for item in part if isinstance(item, AdRequest)]
        for item in part:
            if isinstance(item, Raw):
                await producer.send(deployment.topics.requests, item.value, key=item.key)
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
    timeout_s: float = 120.0,
) -> None:
    """Wait for every decision and dead letter, then check the invariants into `result`."""
    ids = [item.context.request_id for item in requests]
    wanted = set(ids)
    await deployment.until(
        lambda: (
            wanted <= deployment.decisions.keys() and len(deployment.dead_letters) >= len(broken)
        ),
        timeout_s,
    )
    # Whatever else is committed by now (a duplicate would be) is read too.
    await deployment.reader.caught_up()
    await asyncio.sleep(0.5)
    await deployment.reader.caught_up()

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

    # Dead letters: each broken input once, whole, with its reason.
    letters: dict[bytes, list[Decision]] = defaultdict(list)
    for letter in deployment.dead_letters:
        key = letter.payload["key"]
        letters[b"" if key is None else base64.b64decode(key)].append(letter)
    result.dead_letters = len(deployment.dead_letters)
    missing = 0
    for item in broken:
        found = letters.get(item.key, [])
        kept = found[0].payload if found else None
        if (
            kept is None
            or not kept["error"].startswith(item.reason)
            or (kept["value"] and base64.b64decode(kept["value"])) != (item.value or None)
        ):
            missing += 1
    if missing:
        result.fail(f"{missing} broken inputs not dead-lettered whole with their reason")
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
            got = sum(1 for i in asked if outcome_of(decisions[i.context.request_id]) == "served")
            cost = to_micros(rules.cpm) // 1000
            if got != min(len(asked), to_micros(lifetime) // cost):
                wrong.append(f"{campaign_id}: served {got} of {len(asked)}")
        result.model_mismatches = len(wrong)
        if wrong:
            result.fail(f"{len(wrong)} decisions differ from one-at-a-time: {wrong[:3]}")


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


async def routes(deployment: Deployment) -> dict[str, Any]:
    """Which worker each alive worker believes holds each table partition (diagnostics)."""
    import httpx

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
    result = Result("scale_out", "3 workers on 8 partitions: one added, one SIGKILLed", size.name)
    partitions = 8
    async with deployed(env, "scale-out", partitions=partitions) as deployment:
        await deployment.add_worker()
        count = size.scale_requests
        campaigns = campaign_mix(ad_url(env), partitions, partitions, count // partitions)
        await deployment.load(*campaigns.values())
        requests = workload(random.Random(1), list(campaigns), count, users=max(count // 40, 10))
        published: dict[str, float] = {}
        # Steadily over ~40 s, so that the worker added and the worker killed both meet a
        # stream still flowing.
        publisher = asyncio.create_task(
            publish(deployment, requests, chunk=max(count // 150, 1), pause_s=0.25,
                    published_at=published)
        )  # fmt: skip

        await deployment.until(lambda: len(published) >= count // 5, 120)
        started = time.monotonic()
        await deployment.add_worker()
        result.timings_s["worker_added_to_ready"] = round(time.monotonic() - started, 3)
        result.measures["published_when_added"] = len(published)

        await deployment.until(lambda: len(published) >= count // 2, 120)
        topic = deployment.topics.by_campaign
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
        mark = time.monotonic()
        recovery = await first_decision_after(
            deployment, mark, lambda d: d.payload["campaign_id"] in moved_campaigns, 120
        )
        if recovery is None:
            result.fail("no decision on a moved partition after the kill")
        else:
            result.timings_s["kill_to_first_decision_on_moved_partition"] = round(
                recovery + mark - killed_at, 3
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
    result = Result("bad_input", "valid requests mixed with broken ones at volume", size.name)
    async with deployed(env, "volume", partitions=4) as deployment:
        count = size.volume_valid
        campaigns = campaign_mix(ad_url(env), 4, 4, count // 4, tag="v")
        await deployment.load(*campaigns.values())
        rng = random.Random(4)
        requests = workload(rng, list(campaigns), count, users=max(count // 30, 10))
        broken = broken_inputs(rng, size.volume_broken, int(time.time() * 1000))
        resent = rng.sample(requests, count // 50)
        # Broken inputs among the valid ones; re-sent requests a little after their first.
        placed: list[tuple[float, Item]] = [(float(i), item) for i, item in enumerate(requests)]
        placed += [(rng.uniform(0, count), raw) for raw in broken]
        position = {item.context.request_id: i for i, item in enumerate(requests)}
        placed += [
            (position[item.context.request_id] + rng.uniform(1, 200), item) for item in resent
        ]
        placed.sort(key=lambda pair: pair[0])
        items = [item for _, item in placed]
        started = time.monotonic()
        await publish(deployment, items, chunk=500, pause_s=0.0)
        await audit(result, deployment, requests, campaigns, broken=broken, resent=len(resent))
        result.timings_s["published_to_all_decided"] = round(time.monotonic() - started, 3)
        result.measures["dead_letter_reasons"] = dict(
            Counter(letter.payload["error"].split(":")[0] for letter in deployment.dead_letters)
        )
        alive = all(w.running() for w in deployment.workers)
        result.measures["worker_alive"] = alive
        if not alive:
            result.fail("the worker stopped")
    return result


# ---------------------------------------------------------------------------------------
# Registry

Scenario = Callable[[Env, Size], Awaitable[Result]]

SCENARIOS: dict[str, Scenario] = {
    "scale_out": scale_out,
    "bad_input": bad_input_at_volume,
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
