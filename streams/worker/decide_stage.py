"""The decision stage, on `ad-requests` (keyed by user) and `budget-leases`, read as one stream.

Both topics have as many partitions, and partition p of each is read by the same worker: the
requests of p's users and the lease records addressed to p (and to the banks p holds). Per
batch, in stream order:

1. a lease record is applied (`LeaseDesk.receive`): an ask or return reaches the campaign's
   bank, a grant or reclaim reaches its partition's lease; a grant wakes the requests parked
   on that lease;
2. a request is validated (else its dead letter), dropped if its request_id was seen, then
   checked against its campaign's rules and its user's caps, counting the reservations still
   pending (`streams.state.decision_book.DecisionBook`); one that fits takes its cost from its
   partition's lease (`streams.state.leases`) and its upstream resolution starts. A lease
   that cannot cover it denies it (`budget_exhausted`) when the bank had nothing more to
   grant, and otherwise parks it until the bank's answer to the ask on its way arrives;
3. the resolutions run concurrently; a request that fits only if some pending reservation is
   released first waits for those to end, then is decided again;
4. each ended reservation commits (served: caps written, `AdServed` sent) or is released
   (its cost back to the lease, `AdDenied` with `no_fill` or `upstream_error` and the IAB code).

A parked request holds back its partition's committed offset: the requests after it are
decided meanwhile (their request_ids marked seen in the same transactions), so a crash
replays the parked one and drops the others as duplicates.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import msgspec
from faust.types import TP, EventT

from models.codec import (
    MAX_RECORD_BYTES,
    InvalidEvent,
    check_event_time,
    decode_request,
    encode,
)
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
from streams.state.leases import Covered
from streams.topics import Topics, key_partition
from streams.vast.errors import ResponseTooLarge
from streams.vast.result import VastResult
from streams.worker.campaign_view import CampaignView
from streams.worker.event_context import event_context
from streams.worker.lease_desk import LeaseDesk
from streams.worker.metrics import Metrics
from streams.worker.outputs import Outputs
from streams.worker.tables import (
    DEDUPE_WINDOW_MS,
    CapEntry,
    SeenRequest,
    Tables,
    frequency_key,
    split_frequency_key,
)
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


class _Parked(msgspec.Struct):
    event: Any
    request: AdRequest


LeaseOf = tuple[str, int]
"""A lease: (campaign_id, partition)."""


class Parking:
    """Requests waiting for the bank's answer to their lease's ask, in stream order."""

    def __init__(self) -> None:
        self._by_lease: dict[LeaseOf, list[_Parked]] = {}
        self._ids: set[str] = set()
        # Each partition's parked offsets, and a heap of them that may hold some no longer
        # parked: asked after every batch, the earliest costs no walk over every request.
        self._offsets: dict[TP, set[int]] = {}
        self._earliest: dict[TP, list[int]] = {}

    def park(self, lease: LeaseOf, event: EventT[Any], request: AdRequest) -> None:
        self._by_lease.setdefault(lease, []).append(_Parked(event, request))
        self._ids.add(request.context.request_id)
        tp, offset = event.message.tp, event.message.offset
        self._offsets.setdefault(tp, set()).add(offset)
        heapq.heappush(self._earliest.setdefault(tp, []), offset)

    def waiting(self, lease: LeaseOf) -> bool:
        return lease in self._by_lease

    def holds(self, request_id: str) -> bool:
        return request_id in self._ids

    def take(self, lease: LeaseOf) -> list[_Parked]:
        parked = self._by_lease.pop(lease, [])
        for p in parked:
            self._ids.discard(p.request.context.request_id)
            self._offsets[p.event.message.tp].discard(p.event.message.offset)
        return parked

    def leases_of(self, campaign_id: str) -> list[LeaseOf]:
        return [lease for lease in self._by_lease if lease[0] == campaign_id]

    def first_offset(self, tp: TP) -> int | None:
        """The offset of `tp`'s earliest parked request: nothing from it on may commit."""
        earliest, parked = self._earliest.get(tp), self._offsets.get(tp)
        while earliest and (parked is None or earliest[0] not in parked):
            heapq.heappop(earliest)
        return earliest[0] if earliest else None

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions moved away: their new owner decides their parked requests."""
        gone = set(partitions)
        for tp in gone:
            self._offsets.pop(tp, None)
            self._earliest.pop(tp, None)
        for lease, parked in list(self._by_lease.items()):
            kept = [p for p in parked if p.event.message.tp not in gone]
            for p in parked:
                if p.event.message.tp in gone:
                    self._ids.discard(p.request.context.request_id)
            if kept:
                self._by_lease[lease] = kept
            else:
                del self._by_lease[lease]


class Decider:
    def __init__(
        self,
        outputs: Outputs,
        tables: Tables,
        topics: Topics,
        view: CampaignView,
        desk: LeaseDesk,
        resolver: Resolver,
        metrics: Metrics,
        lookaside: Lookaside | None = None,
        *,
        partitions: int,
        history_ms: int = frequency.DEFAULT_HISTORY_MS,
    ) -> None:
        """`partitions`: of `ad-requests` and `budget-leases` alike."""
        self.outputs = outputs
        self.partitions = partitions
        self.tables = tables
        self.topics = topics
        self.view = view
        self.desk = desk
        self.resolver = resolver
        self.metrics = metrics
        self.lookaside = lookaside
        self.expiry = ExpiryIndex()
        """Cap state by the event time it ages out of every window."""
        self.seen_expiry = ExpiryIndex()
        """Request ids by the event time they may be forgotten."""
        self.book = DecisionBook(history_ms)
        """The reservations pending (none between batches), and how long impressions are
        kept: `history_ms` is the impression history horizon (`ADSTREAM_IMPRESSION_HISTORY_S`),
        every served impression of an identified user is kept at least this long."""
        self.parking = Parking()
        self._last: dict[TP, int] = {}
        """The newest offset processed of each partition read."""
        self._anchors: dict[int, EventT[Any]] = {}
        """The newest `budget-leases` event of each partition: what a bank's change between
        events is written with (its partition's transaction)."""

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

    async def rebuild_seen_expiry(self) -> None:
        """After a restore: index the request ids the table holds, so they age out."""
        self.seen_expiry = await rebuilt(
            (entry.partition, request_id, entry.t + DEDUPE_WINDOW_MS)
            for request_id, entry in self.tables.seen.items()
        )

    def _kept_ms(self, campaign_id: str) -> int:
        """How long impressions of this campaign are kept, in event time."""
        return self.book.keep_ms(self.view.get(campaign_id))

    def _expires_at(self, key: str, entry: CapEntry) -> int:
        return frequency.expires_at(entry.impressions, self._kept_ms(split_frequency_key(key)[0]))

    async def handle(self, events: Sequence[EventT[Any]]) -> None:
        batch = _Batch(self, time.perf_counter())
        requests_of_partition: dict[int, EventT[Any]] = {}
        for event in events:
            message = event.message
            self._last[message.tp] = message.offset
            with event_context(event):
                async with self.outputs.dead_letter_on_failure(event):
                    if message.topic == self.topics.leases:
                        self._anchors[message.partition] = event
                        woken = await self.desk.receive(event)
                        if woken is not None:
                            await batch.unpark(woken)
                    else:
                        requests_of_partition[message.partition] = event
                        await batch.take(event)
        await self._end(batch, requests_of_partition)

    async def tick(self) -> None:
        """Between batches: rules that changed reach the banks held here and wake the
        requests parked on their campaigns' leases."""
        changed = self.view.changed()
        if not changed:
            return
        batch = _Batch(self, time.perf_counter())
        for campaign_id in changed:
            anchor = self._anchors.get(self._bank_partition(campaign_id))
            if anchor is not None and self.desk.holds_bank(campaign_id):
                with event_context(anchor):
                    await self.desk.configure(campaign_id, anchor)
            for lease in self.parking.leases_of(campaign_id):
                await batch.unpark(lease)
        await self._end(batch, {})

    def _bank_partition(self, campaign_id: str) -> int:
        """The partition of `budget-leases` a campaign's asks reach (Kafka's default
        partitioner of the key), where its bank lives."""
        return key_partition(campaign_id, self.partitions)

    async def _end(self, batch: _Batch, requests_of_partition: Mapping[int, EventT[Any]]) -> None:
        await batch.finish(list(batch.pending))
        for partition, last in requests_of_partition.items():
            with event_context(last):
                self._expire(partition, last)
        spent = {lease.campaign_id for lease in self.desk.changed_leases()}
        self.desk.write()
        for table in (
            self.tables.seen,
            self.tables.frequency,
            self.tables.leases,
            self.tables.banks,
        ):
            await table.flush(self.outputs.send)
        await self.outputs.delivered()
        if self.lookaside is not None and (batch.changes.caps or spent):
            # Every lease held here of a campaign that spent: a Redis emptied meanwhile
            # gets this worker's whole share back at once.
            owned = {tp.partition for tp in self._last if tp.topic == self.topics.requests}
            for campaign_id in spent:
                rules = self.view.get(campaign_id)
                if rules is None:
                    continue
                for lease in self.tables.leases_at(campaign_id, owned):
                    batch.changes.spend[(campaign_id, lease.partition)] = (lease.spend(), rules)
            self.lookaside.write(batch.changes)

    def finished(self) -> dict[TP, int]:
        """What may commit: every partition's newest offset, short of its parked requests."""
        done = {}
        for tp, offset in self._last.items():
            parked = self.parking.first_offset(tp)
            done[tp] = offset if parked is None else min(offset, parked - 1)
        return done

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions moved away (their state goes with them)."""
        gone = set(partitions)
        self.parking.forget(gone)
        for tp in gone:
            self._last.pop(tp, None)
            if tp.topic == self.topics.leases:
                self._anchors.pop(tp.partition, None)
        numbers = {tp.partition for tp in gone if tp.topic == self.topics.requests}
        self.expiry.forget(numbers)
        self.seen_expiry.forget(numbers)

    def _expire(self, partition: int, last: EventT[Any]) -> None:
        """Drop the state of `partition` that has aged out: cap histories out of every
        window, request ids past the dedupe window."""
        for key in self.expiry.sweep(partition, self._stored_expiry):
            self.tables.frequency.delete(key, last)
        for request_id in self.seen_expiry.due(partition):
            self.tables.seen.delete(request_id, last)

    def _stored_expiry(self, key: str) -> int | None:
        entry = self.tables.frequency.get(key)
        return None if entry is None else self._expires_at(key, entry)

    def mark_seen(self, event: EventT[Any], request: AdRequest) -> None:
        """The request is decided (or being decided): a second one of its id is dropped."""
        context = request.context
        partition = event.message.partition
        self.tables.seen.set(context.request_id, SeenRequest(context.timestamp, partition), event)
        self.seen_expiry.add(partition, context.request_id, context.timestamp + DEDUPE_WINDOW_MS)
        self.seen_expiry.observe(partition, context.timestamp)

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
        self.synced = False
        """Whether the campaign rules were read up to the topic's end during this batch."""

    async def take(self, event: EventT[Any]) -> None:
        """A request from `ad-requests`: validated, de-duplicated, then decided."""
        decider = self.decider
        message = event.message
        value = message.value or b""  # a null value (tombstone) is undecodable like any other
        try:
            request = decode_request(value)
            check_event_time(request.context.timestamp, round(message.timestamp * 1000))
        except InvalidEvent as exc:
            await decider.outputs.dead_letter(event, exc.reason, exc.detail)
            return
        context = request.context
        if context.request_id in decider.tables.seen or decider.parking.holds(context.request_id):
            decider.metrics.duplicates.inc()
            log.info(
                "duplicate dropped",
                extra={"request_id": context.request_id, "correlator": context.correlator},
            )
            return
        await self.decide(event, request)

    async def unpark(self, lease: LeaseOf) -> None:
        """The lease changed: decide its parked requests again, in their order."""
        for parked in self.decider.parking.take(lease):
            with event_context(parked.event):
                async with self.decider.outputs.dead_letter_on_failure(parked.event):
                    await self.decide(parked.event, parked.request)

    async def decide(self, event: EventT[Any], request: AdRequest) -> None:
        decider = self.decider
        tables = decider.tables
        context = request.context
        user_id = user_id_of(context)
        t = context.timestamp
        partition = event.message.partition
        lease: LeaseOf = (request.campaign_id, partition)
        rules = decider.view.get(request.campaign_id)
        if rules is None and not self.synced:
            # Unknown here, or not read yet: a campaign is often loaded just before its
            # first requests, so the rules are read up to now before refusing.
            await decider.view.sync()
            self.synced = True
            rules = decider.view.get(request.campaign_id)
        if rules is not None and decider.parking.waiting(lease):
            decider.parking.park(lease, event, request)  # behind the earlier ones
            return
        # Cap state ages out by the partition's newest event time, at batch ends (`_expire`).
        aged_out_by = decider.expiry.swept(partition)
        decider.expiry.observe(partition, t)
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
                aged_out_by=aged_out_by,
            )
            if not isinstance(verdict, Wait):
                break
            await self.finish(verdict.on)
        if isinstance(verdict, Deny):
            decider.mark_seen(event, request)
            version = rules.version if rules else None
            await decider.deny(
                event, request, verdict.reason, verdict.detail, version, self.started
            )
            return
        assert rules is not None
        while True:
            covered = await decider.desk.take(rules, t, event)
            if isinstance(covered, Covered):
                break
            # A reservation released may give its cost back to the lease.
            ours = [
                request_id
                for request_id, p in self.pending.items()
                if (p.request.campaign_id, p.event.message.partition) == lease
            ]
            if ours:
                await self.finish(ours)
                continue
            if covered.dry is None:
                decider.parking.park(lease, event, request)
                return
            decider.mark_seen(event, request)
            await decider.deny(
                event, request, "budget_exhausted", covered.dry, rules.version, self.started
            )
            return
        decider.mark_seen(event, request)
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
            # Encoded before any state changes, so that a failure leaves none behind but the
            # cost taken from the lease, which goes back.
            try:
                served = self.decider.served_record(pending.request, pending.rules, result)
            except Exception:
                await self.decider.desk.give_back(
                    pending.rules, reservation.t, reservation.cost, pending.event
                )
                raise
            if served is not None:
                self._commit(pending.event, reservation, pending.rules)
                await self.decider.serve(pending.event, pending.request, served, self.started)
                return
            code = TOO_LARGE
        await self.decider.desk.give_back(
            pending.rules, reservation.t, reservation.cost, pending.event
        )
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
