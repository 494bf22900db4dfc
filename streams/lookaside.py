"""The Redis lookaside: the worker writes current caps and spend through; edges read them.

Keys (all with a TTL, so Redis never fills up):

    <prefix>adstream:cap:<campaign_id>:<user_id>   -> `CapView`    (TTL: longest window + 1 h)
    <prefix>adstream:spend:<campaign_id>           -> hash: partition -> `SpendView` of its
                                                      lease (TTL: 2 days)

Cap views are written when a capped campaign serves. The worker records impressions of
uncapped campaigns too (a cap added later counts them) but writes no view of them: after an
update adds a cap, an edge misses in Redis and the worker's route answers from everything
recorded. A view carries the caps in force when it was written, so one written before an
update answers by the old caps until the user's next impression or its TTL.

The worker's writes are pipelined, coalesced and best effort: Redis being slow or down never
delays or changes a decision. An edge asks `LookasideClient` whether a user is capped or a
campaign exhausted; on a Redis miss (or Redis down) it asks the worker that owns the campaign
over its web port (`/adstream/state/<campaign_id>/?user=<user_id>`) and fills Redis.
"""

from __future__ import annotations

import asyncio
import logging
import math

import httpx
import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.state import frequency, spend
from streams.state.campaigns import CampaignRules, Cap
from streams.state.frequency import ALLOWED_LATENESS_MS, Impressions
from streams.state.spend import Spend

log = logging.getLogger(__name__)

SPEND_TTL_S = 2 * 86_400
RETRY_AFTER_S = 0.5
"""After a Redis failure, the writer waits this long before trying again."""
MAX_QUEUED_KEYS = 100_000


class CapView(msgspec.Struct, frozen=True):
    """What an edge needs to check a user's caps for a campaign at any event time."""

    times: list[int]
    horizon: int
    caps: list[Cap]


class SpendView(msgspec.Struct, frozen=True):
    lifetime: int
    daily: dict[int, int]
    oldest_day: int
    cost: int
    lifetime_limit: int | None
    daily_limit: int | None


class StateView(msgspec.Struct, frozen=True):
    """The worker's answer for one campaign (and user), as served on its web port."""

    campaign_id: str
    known: bool
    version: int | None = None
    """The `campaigns` offset of the rules in force on the worker."""
    spend: SpendView | None = None
    cap: CapView | None = None


def cap_view(impressions: Impressions, rules: CampaignRules) -> CapView:
    return CapView(impressions.times, impressions.horizon, list(rules.caps))


def spend_view(spent: Spend, rules: CampaignRules) -> SpendView:
    return SpendView(
        spent.lifetime,
        spent.daily,
        spent.oldest_day,
        rules.cost_micros,
        rules.lifetime_micros,
        rules.daily_micros,
    )


def cap_key(prefix: str, campaign_id: str, user_id: str) -> str:
    return f"{prefix}adstream:cap:{campaign_id}:{user_id}"


def spend_key(prefix: str, campaign_id: str) -> str:
    return f"{prefix}adstream:spend:{campaign_id}"


class StateChanges(msgspec.Struct):
    """What one batch committed, for the Redis lookaside."""

    caps: dict[tuple[str, str], tuple[Impressions, CampaignRules]] = msgspec.field(
        default_factory=dict
    )
    """Per (campaign_id, user_id) of a capped campaign: the user's impressions now."""
    spend: dict[tuple[str, int], tuple[Spend, CampaignRules]] = msgspec.field(default_factory=dict)
    """Per (campaign_id, partition): what the partition's lease has spent now."""


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that retries a command once on a fresh connection: after Redis restarts,
    every pooled connection is dead, and the first write would otherwise be lost."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def cap_ttl_s(caps: list[Cap]) -> int:
    longest = max((cap.window_ms for cap in caps), default=0)
    return max(1, math.ceil((longest + ALLOWED_LATENESS_MS) / 1000))


class RedisLookaside:
    """The worker's side: best-effort, pipelined write-through."""

    def __init__(self, url: str, *, prefix: str = "", errors: Counter | None = None) -> None:
        self.client = connect(url, timeout_s=0.5)
        self.prefix = prefix
        self.errors = errors
        """Counts failed writes (the worker's `adstream_redis_errors`)."""
        self._queued: dict[tuple[str, str | None], tuple[bytes, int]] = {}
        """(key, hash field or None) -> (value, TTL in seconds)."""
        self._writer: asyncio.Task[None] | None = None
        self._encoder = msgspec.json.Encoder()

    def write(self, changes: StateChanges) -> None:
        """Queue the batch's changes; a single background writer sends them."""
        for (campaign_id, user_id), (impressions, rules) in changes.caps.items():
            view = cap_view(impressions, rules)
            self._queued[(cap_key(self.prefix, campaign_id, user_id), None)] = (
                self._encoder.encode(view),
                cap_ttl_s(view.caps),
            )
        for (campaign_id, partition), (spent, rules) in changes.spend.items():
            self._queued[(spend_key(self.prefix, campaign_id), str(partition))] = (
                self._encoder.encode(spend_view(spent, rules)),
                SPEND_TTL_S,
            )
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, {}
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for (key, field), (value, ttl) in batch.items():
                        if field is None:
                            pipe.set(key, value, ex=ttl)
                        else:
                            pipe.hset(key, field, value)
                            pipe.expire(key, ttl)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                if self.errors is not None:
                    self.errors.inc()
                log.warning("lookaside write of %d keys failed: %s", len(batch), exc)
                # Keep the newest value of each key for the next attempt, within bounds:
                # after a long outage edges fall back to the worker for what was dropped.
                if len(batch) + len(self._queued) <= MAX_QUEUED_KEYS:
                    self._queued = {**batch, **self._queued}
                await asyncio.sleep(RETRY_AFTER_S)

    async def aclose(self) -> None:
        if self._writer is not None:
            await asyncio.wait([self._writer], timeout=1.0)
            self._writer.cancel()
        await self.client.aclose()


async def cached_spend(client: aioredis.Redis, key: str) -> list[SpendView]:
    """The spend views of every partition's lease Redis holds under `key` (`spend_key`)."""
    fields = await client.hgetall(key)
    return [msgspec.json.decode(raw, type=SpendView) for raw in fields.values()]


class LookasideClient:
    """An edge's side: Redis first, the owning worker on a miss; answers at an event time."""

    def __init__(self, redis_url: str, worker_url: str, *, prefix: str = "") -> None:
        self.redis = connect(redis_url, timeout_s=0.2)
        self.http = httpx.AsyncClient(base_url=worker_url, timeout=2.0)
        self.prefix = prefix
        self._decoder = msgspec.json.Decoder(StateView)

    async def is_capped(self, campaign_id: str, user_id: str, at_ms: int) -> bool:
        """Whether one more ad for this user at event time `at_ms` would break a cap."""
        raw = await self._redis_get(cap_key(self.prefix, campaign_id, user_id))
        if raw is not None:
            view = msgspec.json.decode(raw, type=CapView)
        else:
            state = await self._ask_worker(campaign_id, user_id)
            if state.cap is None:
                return False
            view = state.cap
        impressions = Impressions(list(view.times), view.horizon)
        if frequency.is_late(impressions, view.caps, at_ms):
            return True
        return frequency.blocking_cap(view.times, view.caps, at_ms) is not None

    async def is_exhausted(self, campaign_id: str, at_ms: int) -> bool:
        """Whether one more impression at event time `at_ms` would exceed a budget: the sum
        of what every partition's lease has spent, as the worker last wrote it."""
        views = await self._redis_spend(spend_key(self.prefix, campaign_id))
        if not views:
            state = await self._ask_worker(campaign_id, None)
            if state.spend is None:
                return not state.known
            views = [state.spend]
        spent = spend.total(Spend(v.lifetime, dict(v.daily), v.oldest_day) for v in views)
        rules = views[0]  # every partition writes the rules in force with its spend
        return (
            spend.exceeded_budget(spent, rules.cost, at_ms, rules.lifetime_limit, rules.daily_limit)
            is not None
        )

    async def _redis_spend(self, key: str) -> list[SpendView]:
        try:
            return await cached_spend(self.redis, key)
        except (RedisError, OSError):
            return []

    async def _redis_get(self, key: str) -> bytes | None:
        try:
            value = await self.redis.get(key)
        except (RedisError, OSError):
            return None
        return value if isinstance(value, bytes) else None

    async def _ask_worker(self, campaign_id: str, user_id: str | None) -> StateView:
        params = {"user": user_id} if user_id is not None else {}
        response = await self.http.get(f"/adstream/state/{campaign_id}/", params=params)
        response.raise_for_status()
        state = self._decoder.decode(response.content)
        encoder = msgspec.json.Encoder()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if state.cap is not None and user_id is not None:
                    pipe.set(cap_key(self.prefix, campaign_id, user_id),
                             encoder.encode(state.cap), ex=cap_ttl_s(state.cap.caps))  # fmt: skip
                await pipe.execute()
        except (RedisError, OSError):
            pass  # the answer stands; the cache fills another time
        return state

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.http.aclose()
