"""What an edge server uses: `EdgePublisher` sends ad requests to `ad-requests` and, when asked,
waits for each one's decision.

docs/design.md fixes the record: the value is the encoded request, the key its user key (so a
user's requests stay in order on one partition), and the record timestamp its event time (so
the decisions, stamped the same way, line up with it).

Waiting for decisions costs one read_committed consumer per process, not one per call: it
reads every partition of `ad-served` and `ad-denied` from their ends at `start()` (no
consumer group, so every edge process sees every decision) and hands each decision to the
caller waiting for its request_id. Decisions nobody waits for are skipped after reading only
their request_id.

    async with EdgePublisher.from_settings(Settings.from_env()) as edge:
        context = SessionContext.create(cookies=request.cookies)
        ad_request = AdRequest(schema=1, context=context, campaign_id="c1",
                               placement_id="home", params={})
        decision = await edge.decide(ad_request, timeout=0.5)
        if isinstance(decision, AdServed):
            ...  # decision.vast is the unwrapped document to return to the player
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Self

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from models.codec import InvalidEvent, decode, encode
from models.context import user_key
from models.events import AdDenied, AdRequest, AdServed
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)

LINGER_MS = 5
"""Requests published within this long share a produce request; an ad call can spare it."""
MAX_BUFFER_BYTES = 16 * 1024 * 1024
"""Requests waiting to be sent; `publish` waits (backpressure) while it is full."""
SEND_TIMEOUT_MS = 30_000
"""How long `publish` waits for the broker (buffer space and acknowledgement) before failing."""


class RequestRecord(msgspec.Struct, frozen=True):
    key: bytes
    value: bytes
    timestamp_ms: int


def request_record(request: AdRequest) -> RequestRecord:
    context = request.context
    return RequestRecord(user_key(context).encode(), encode(request), context.timestamp)


class DecisionTimeout(msgspec.Struct, frozen=True):
    """No decision became visible within the time the caller gave `decide`.

    The request may still be decided later (or, when the broker was too slow to take it, not
    be published at all): the edge answers its player without an ad, or retries with the same
    request_id, which the worker decides at most once.
    """

    request_id: str
    waited_s: float


EdgeDecision = AdServed | AdDenied | DecisionTimeout


class PublishError(Exception):
    """The broker did not accept a request in time (unreachable, or the buffer stayed full)."""


class _RequestIdOnly(msgspec.Struct):
    request_id: str = ""


class EdgePublisher:
    """An idempotent producer of ad requests and a router of their decisions.

    `publish` returns once the broker has the request (acks=all); `decide` publishes and
    waits for the decision. Call `start()` first (or use `async with`), `close()` at the end.
    """

    def __init__(
        self, bootstrap_servers: str, topics: Topics, *, wait_for_decisions: bool = True
    ) -> None:
        """`wait_for_decisions=False` for a publisher that never calls `decide` (no reader)."""
        self.topics = topics
        self._bootstrap = bootstrap_servers
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=LINGER_MS,
            max_batch_size=256 * 1024,
            request_timeout_ms=SEND_TIMEOUT_MS,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        self._waiters: dict[str, asyncio.Future[AdServed | AdDenied]] = {}
        self._decision_types: dict[str, type[AdServed] | type[AdDenied]] = {
            topics.served: AdServed,
            topics.denied: AdDenied,
        }
        self._router: asyncio.Task[None] | None = None
        self._wait_for_decisions = wait_for_decisions
        self._id_decoder = msgspec.json.Decoder(_RequestIdOnly)

    @classmethod
    def from_settings(cls, settings: Settings, *, wait_for_decisions: bool = True) -> EdgePublisher:
        topics = Topics.named(settings.topic_prefix)
        return cls(settings.kafka_bootstrap_servers, topics, wait_for_decisions=wait_for_decisions)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, and position the decision reader at the current ends of the outputs."""
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            await self._consumer.stop()
            raise PublishError(
                f"cannot reach the Kafka broker at {self._bootstrap}: {exc!r}"
            ) from exc
        if not self._wait_for_decisions:
            await self._consumer.stop()  # never used: closed, or it is reported as leaked
            return
        try:
            await self._consumer.start()
            partitions = [
                TopicPartition(topic, partition)
                for topic in self._decision_types
                for partition in sorted(await self._partitions(topic))
            ]
            self._consumer.assign(partitions)
            await self._consumer.seek_to_end(*partitions)
            # Resolve the positions now: a decision published after start() is then never
            # behind the reader's starting point.
            for partition in partitions:
                await self._consumer.position(partition)
        except BaseException:
            await self._consumer.stop()
            await self._producer.stop()
            raise
        self._router = asyncio.create_task(self._route(), name="edge-decision-router")

    async def _partitions(self, topic: str) -> set[int]:
        # Asked for all topics first: asking for one by name makes a broker that auto-creates
        # topics create it, with the wrong settings.
        if topic not in await self._consumer.topics():
            raise PublishError(f"topic {topic!r} does not exist (has the worker created it?)")
        return set(await self._producer.partitions_for(topic))

    async def send(self, request: AdRequest) -> asyncio.Future[object]:
        """Queue one request; the returned future ends when the broker has acknowledged it.

        Waits (backpressure) while the producer's buffer is full.
        """
        record = request_record(request)
        try:
            acknowledged: asyncio.Future[object] = await self._producer.send(
                self.topics.requests,
                value=record.value,
                key=record.key,
                timestamp_ms=record.timestamp_ms,
            )
            return acknowledged
        except KafkaError as exc:
            raise PublishError(
                f"request {request.context.request_id} not published: {exc!r}"
            ) from exc

    async def publish(self, request: AdRequest) -> None:
        """Send one request; returns once the broker has acknowledged it."""
        acknowledged = await self.send(request)
        try:
            await acknowledged
        except KafkaError as exc:
            raise PublishError(
                f"request {request.context.request_id} not published: {exc!r}"
            ) from exc

    async def decide(self, request: AdRequest, timeout: float) -> EdgeDecision:  # noqa: ASYNC109
        """Publish `request` and wait up to `timeout` seconds for its decision.

        A parameter rather than the caller's `asyncio.timeout`: running out of time is an
        expected outcome at an edge, answered with a `DecisionTimeout`, not an exception.
        """
        if self._router is None:
            raise RuntimeError("start() an EdgePublisher made with wait_for_decisions=True first")
        request_id = request.context.request_id
        if request_id in self._waiters:
            raise ValueError(f"already waiting for a decision on {request_id}")
        started = time.monotonic()
        waiter = self._waiters[request_id] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.publish(request)
                decision: AdServed | AdDenied = await waiter
                return decision
        except TimeoutError:
            return DecisionTimeout(request_id, time.monotonic() - started)
        finally:
            del self._waiters[request_id]

    @property
    def waiting(self) -> int:
        """Callers waiting for a decision now."""
        return len(self._waiters)

    async def flush(self) -> None:
        """Until every request published so far is with the broker."""
        await self._producer.flush()

    async def close(self) -> None:
        """Flush, stop the decision reader (waiters get their timeout), disconnect."""
        if self._router is not None:
            self._router.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._router
            self._router = None
            await self._consumer.stop()
        await self._producer.stop()

    async def _route(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                # The waiters time out meanwhile; the reader must outlive a broker hiccup.
                log.warning("reading decisions failed, retrying: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for partition, records in batches.items():
                for record in records:
                    self._deliver(partition.topic, record.value)

    def _deliver(self, topic: str, value: bytes | None) -> None:
        if not self._waiters or value is None:
            return
        try:
            request_id = self._id_decoder.decode(value).request_id
        except msgspec.DecodeError:
            log.warning("undecodable record on %s skipped", topic)
            return
        waiter = self._waiters.get(request_id)
        if waiter is None or waiter.done():
            return
        try:
            waiter.set_result(decode(value, self._decision_types[topic], max_bytes=None))
        except InvalidEvent as exc:
            log.warning("decision for %s on %s is invalid: %s", request_id, topic, exc)
