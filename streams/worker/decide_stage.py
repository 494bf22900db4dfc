"""Stage 2, on `requests-by-campaign` and `campaigns` (both keyed by campaign_id).

One stream carries both topics, so a campaign update takes effect for exactly the requests
the stage reads after it. Per batch:

1. in stream order, each request is checked against its campaign's rules, the committed
   caps and spend, and the reservations still pending (`streams.state.decision_book.DecisionBook`);
   a request that fits reserves its cap slot and cost and its upstream resolution starts;
2. the resolutions run concurrently; a request that fits only if some pending reservation is
   released first waits for those to end, then is decided again;
3. each ended reservation commits (served: caps and spend written, `AdServed` sent) or is
   released (`AdDenied` with `no_fill` or `upstream_error` and the IAB code).

The outcome is exactly that of deciding the requests one at a time in stream order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import msgspec
from faust.types import EventT

from models.codec import MAX_RECORD_BYTES, InvalidEvent, decode, decode_campaign_record, encode
from models.context import user_id_of
from models.events import (
    SCHEMA_VERSION,
    AdDenied,
    AdRequest,
    AdServed,
    DenialReason,
    request_fields,
)
from models.money import from_micros
from streams.lookaside import StateChanges
from streams.state import frequency
from streams.state.campaigns import CampaignRules
from streams.state.decision_book import DecisionBook, Deny, Reservation, Wait
from streams.state.expiry import ExpiryIndex, rebuilt
from streams.state.frequency import Impressions
from streams.state.spend import Spend
from streams.topics import Topics
from streams.vast.errors import ResponseTooLarge
from streams.vast.result import VastResult
from streams.worker.event_context import event_context
from streams.worker.metrics import Metrics
from streams.worker.outputs import Outputs
from streams.worker.tables import CapEntry, Tables, frequency_key, split_frequency_key
from streams.worker.upstream_log import explain_upstream_error

log = logging.getLogger(__name__)

UPSTREAM_FAILURE = 900
"""IAB's 'undefined error': the resolver itself failed, which must not stop the worker."""
TOO_LARGE = ResponseTooLarge.code
"""An ad whose `AdServed` would not fit a record is refused as its document would be."""


class Resolver(Protocol):
    async def resolve(self, rules: CampaignRules, request: AdRequest) -> VastResult: ...


class Lookaside(Protocol):
    def write(self, changes: StateChanges) -> None: ...


class _Pending(msgspec.Struct):
    event: Any
    request: AdRequest
    rules: CampaignRules
    task: asyncio.Task[VastResult]


class Decider:
    def __init__(
        self,
        outputs: Outputs,
        tables: Tables,
        topics: Topics,
        resolver: Resolver,
        metrics: Metrics,
        lookaside: Lookaside | None = None,
        *,
        history_ms: int = frequency.DEFAULT_HISTORY_MS,
    ) -> None:
        self.outputs = outputs
        self.tables = tables
        self.topics = topics
        self.resolver = resolver
        self.metrics = metrics
        self.lookaside = lookaside
        self.expiry = ExpiryIndex()
        self.book = DecisionBook(history_ms)
        """The reservations pending (none between batches), and how long impressions are
        kept: `history_ms` is the impression history horizon (`ADSTREAM_IMPRESSION_HISTORY_S`),
        every served impression of an identified user is kept at least this long."""

    async def rebuild_expiry(self) -> None:
        """After a restore: index what the frequency table holds, so it ages out."""
        kept_ms: dict[str, int] = {}  # a million keys share a handful of campaigns

        def expires_at(key: str, entry: CapEntry) -> int:
            campaign_id = split_frequency_key(key)[0]
            if campaign_id not in kept_ms:
                kept_ms[campaign_id] = self._kept_ms(campaign_id)
            return frequency.expires_at(entry.impressions, kept_ms[campaign_id])

        self.expiry = await rebuilt(
            (entry.partition, key, expires_at(key, entry))
            for key, entry in self.tables.frequency.items()
        )

    def _kept_ms(self, campaign_id: str) -> int:
        """How long impressions of this campaign are kept, in event time."""
        return self.book.keep_ms(self.tables.campaigns.get(campaign_id))

    def _expires_at(self, key: str, entry: CapEntry) -> int:
        return frequency.expires_at(entry.impressions, self._kept_ms(split_frequency_key(key)[0]))

    async def handle(self, events: Sequence[EventT[Any]]) -> None:
        batch = _Batch(self, time.perf_counter())
        last_of_partition: dict[int, EventT[Any]] = {}
        for event in events:
            last_of_partition[event.message.partition] = event
            with event_context(event):
                async with self.outputs.dead_letter_on_failure(event):
                    if event.message.topic == self.topics.campaigns:
                        await self._update_campaign(event)
                    else:
                        await batch.decide(event)
        await batch.finish(list(batch.pending))
        for last in last_of_partition.values():
            with event_context(last):
                self._expire(last)
        for table in (self.tables.campaigns, self.tables.frequency, self.tables.spend):
            await table.flush(self.outputs.send)
        await self.outputs.delivered()
        if self.lookaside is not None and (batch.changes.caps or batch.changes.spend):
            self.lookaside.write(batch.changes)

    def _expire(self, last: EventT[Any]) -> None:
        """Drop the cap state of `last`'s partition that has aged out of every window."""
        for key in self.expiry.sweep(last.message.partition, self._stored_expiry):
            self.tables.frequency.delete(key, last)

    def _stored_expiry(self, key: str) -> int | None:
        entry = self.tables.frequency.get(key)
        return None if entry is None else self._expires_at(key, entry)

    async def _update_campaign(self, event: EventT[Any]) -> None:
        message = event.message
        key = (message.key or b"").decode(errors="replace")
        if message.value is None:
            self.tables.campaigns.delete(key, event)
            log.info("campaign %s deleted at offset %d", key, message.offset)
            return
        try:
            campaign = decode_campaign_record(key, message.value)
        except InvalidEvent as exc:
            await self.outputs.dead_letter(event, exc.reason, exc.detail)
            return
        rules = CampaignRules.from_campaign(campaign, version=message.offset)
        self.tables.campaigns.set(campaign.campaign_id, rules, event)
        log.info("campaign %s version %d in force", campaign.campaign_id, message.offset)

    async def deny(
        self,
        event: EventT[Any],
        request: AdRequest,
        reason: DenialReason,
        detail: str | None,
        version: int | None,
        started: float,
    ) -> None:
        context = request.context
        denied = AdDenied(
            **request_fields(request),
            schema=SCHEMA_VERSION,
            reason=reason,
            detail=detail,
            campaign_version=version,
        )
        await self._emit(event, self.topics.denied, request, encode(denied), started)
        self.metrics.decisions.labels(outcome="denied", reason=reason).inc()
        log.debug(
            "denied %s: %s",
            reason,
            detail,
            extra={"request_id": context.request_id, "correlator": context.correlator},
        )

    def served_record(
        self, request: AdRequest, rules: CampaignRules, result: VastResult
    ) -> bytes | None:
        """The encoded `AdServed` of `result`'s first ad; None when its record would pass
        `MAX_RECORD_BYTES` (the resolver bounds what an ad holds, this is the exact check of
        the event as a whole)."""
        ad = result.ads[0]
        served = encode(
            AdServed(
                **request_fields(request),
                schema=SCHEMA_VERSION,
                cost=from_micros(rules.cost_micros),
                currency=rules.currency,
                ad=ad.served(),
                vast=ad.vast,
                chain=result.chain,
                campaign_version=rules.version,
            )
        )
        if len(served) > MAX_RECORD_BYTES:
            self.metrics.upstream_errors.labels(code=str(TOO_LARGE)).inc()
            log.warning(
                "ad refused: its AdServed would be %d bytes > %d",
                len(served),
                MAX_RECORD_BYTES,
                extra={"request_id": request.context.request_id},
            )
            return None
        return served

    async def serve(
        self, event: EventT[Any], request: AdRequest, served: bytes, started: float
    ) -> None:
        """Send a `served_record` (its state changes are written by then)."""
        await self._emit(event, self.topics.served, request, served, started)
        self.metrics.decisions.labels(outcome="served", reason="").inc()

    async def _emit(
        self, event: EventT[Any], topic: str, request: AdRequest, value: bytes, started: float
    ) -> None:
        await self.outputs.send(
            event, topic, request.campaign_id.encode(), value, request.context.timestamp
        )
        self.metrics.decision_latency.observe(time.perf_counter() - started)
        # Wall clock against event time: how late decisions are, Kafka's backlog included.
        event_age_s = time.time() - request.context.timestamp / 1000
        self.metrics.event_latency.observe(max(0.0, event_age_s))

    async def resolve(self, rules: CampaignRules, request: AdRequest) -> VastResult:
        started = time.perf_counter()
        try:
            result = await self.resolver.resolve(rules, request)
        except Exception:
            # A resolver bug must cost one ad, not the worker.
            log.exception("resolver failed", extra={"request_id": request.context.request_id})
            result = VastResult(status="error", error_code=UPSTREAM_FAILURE, ads=(), chain=())
        self.metrics.upstream_latency.observe(time.perf_counter() - started)
        if result.status != "inline":
            self.metrics.upstream_errors.labels(code=str(result.error_code)).inc()
            explain_upstream_error(rules, request, result)
        return result


class _Batch:
    """The reservations of one batch and what they changed."""

    def __init__(self, decider: Decider, started: float) -> None:
        self.decider = decider
        self.started = started
        self.book = decider.book
        self.pending: dict[str, _Pending] = {}
        self.changes = StateChanges()

    async def decide(self, event: EventT[Any]) -> None:
        decider = self.decider
        tables = decider.tables
        # Stage 1 validated this exact payload; decoding it again is cheaper than shipping
        # a decoded copy between stages.
        request = decode(event.message.value or b"", AdRequest)
        context = request.context
        user_id = user_id_of(context)
        t = context.timestamp
        partition = event.message.partition
        # Cap state ages out by the partition's newest event time, at batch ends (`_expire`).
        aged_out_by = decider.expiry.swept(partition)
        decider.expiry.observe(partition, t)
        rules = tables.campaigns.get(request.campaign_id)
        while True:
            entry = None
            if rules is not None and rules.caps and user_id is not None:
                # Uncapped campaigns record impressions too, but read none.
                entry = tables.frequency.get(frequency_key(rules.campaign_id, user_id))
            verdict = self.book.evaluate(
                request_id=context.request_id,
                user_id=user_id,
                t=t,
                rules=rules,
                impressions=entry.impressions if entry else None,
                spent=tables.spend.get(request.campaign_id) if rules else None,
                aged_out_by=aged_out_by,
            )
            if not isinstance(verdict, Wait):
                break
            await self.finish(verdict.on)
        if isinstance(verdict, Deny):
            version = rules.version if rules else None
            await decider.deny(
                event, request, verdict.reason, verdict.detail, version, self.started
            )
            return
        assert rules is not None
        self.book.reserve(
            self.book.reservation_for(context.request_id, rules, user_id, t, verdict.cost)
        )
        task = asyncio.create_task(decider.resolve(rules, request))
        self.pending[context.request_id] = _Pending(event, request, rules, task)

    async def finish(self, request_ids: Iterable[str]) -> None:
        """End these reservations: commit the served ones, release the others."""
        for request_id in list(request_ids):
            pending = self.pending.pop(request_id)
            result = await pending.task
            reservation = self.book.end(request_id)
            with event_context(pending.event):
                async with self.decider.outputs.dead_letter_on_failure(pending.event):
                    await self._end(pending, reservation, result)

    async def _end(self, pending: _Pending, reservation: Reservation, result: VastResult) -> None:
        code = result.error_code
        if result.status == "inline" and result.ads:
            # Encoded before any state changes, so that a failure leaves none behind.
            served = self.decider.served_record(pending.request, pending.rules, result)
            if served is not None:
                self._commit(pending.event, reservation, pending.rules)
                await self.decider.serve(pending.event, pending.request, served, self.started)
                return
            code = TOO_LARGE
        reason: DenialReason = "no_fill" if result.status == "no_ad" else "upstream_error"
        await self.decider.deny(
            pending.event,
            pending.request,
            reason,
            str(code),
            pending.rules.version,
            self.started,
        )

    def _commit(self, event: EventT[Any], reservation: Reservation, rules: CampaignRules) -> None:
        tables = self.decider.tables
        # Every impression of an identified user, capped campaign or not: a cap added or a
        # window lengthened by a later update counts what was served before it.
        if reservation.recorded and reservation.user_id is not None:
            key = frequency_key(rules.campaign_id, reservation.user_id)
            entry = tables.frequency.get(key) or CapEntry(Impressions(), event.message.partition)
            reservation.record(entry.impressions)
            tables.frequency.set(key, entry, event)
            self.decider.expiry.add(
                entry.partition, key, frequency.expires_at(entry.impressions, reservation.keep_ms)
            )
            if rules.caps:  # the lookaside answers for capped campaigns only
                self.changes.caps[(rules.campaign_id, reservation.user_id)] = (
                    entry.impressions,
                    rules,
                )
        spent = tables.spend.get(rules.campaign_id) or Spend()
        reservation.charge(spent)
        tables.spend.set(rules.campaign_id, spent, event)
        self.changes.spend[rules.campaign_id] = (spent, rules)
