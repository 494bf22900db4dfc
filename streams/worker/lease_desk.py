"""Budgets as leases, wired: the partitions' leases and the campaigns' banks on `budget-leases`.

The rules are pure (`streams.state.leases`); this module holds their state in the `leases`
and `banks` tables and carries their events:

- a deciding partition spends from its lease (`take`, `give_back`); the asks and returns
  that causes go to `budget-leases`, keyed by campaign, so they reach the partition the
  campaign's bank lives on;
- that partition's events reach `receive`, which applies them to the bank and sends its
  grants and reclaims to the deciding partition they name (`budget-leases` has as many
  partitions as `ad-requests`, and the worker reads both as one stream);
- a grant reaching its partition wakes the requests parked there for want of it.

Every record is sent in the transaction of the event that caused it, with the table writes
it implies, so a lease never moves without its record and vice versa.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import EventT

from models.codec import InvalidEvent, decode_lease_record, encode
from models.money import MoneyError
from streams.state.campaigns import CampaignRules
from streams.state.leases import (
    Bank,
    BudgetBank,
    Lease,
    LeaseAsk,
    LeaseBook,
    LeaseEvent,
    LeaseReturn,
    LeaseVerdict,
    Terms,
    ToBank,
    ToPartition,
    from_record,
    to_record,
)
from streams.worker.campaign_view import CampaignView
from streams.worker.outputs import Outputs
from streams.worker.tables import Tables, lease_key

log = logging.getLogger(__name__)

RETIRED = Terms(version=-1, cost=1, lifetime=None, daily=None)
"""The terms of a deleted campaign: no budget names what its leases hold, so they go back."""


class LeaseDesk:
    """The leases and banks a worker holds, read and written through its tables."""

    def __init__(
        self,
        tables: Tables,
        topic: str,
        view: CampaignView,
        outputs: Outputs,
        book: LeaseBook | None = None,
        bank_rules: BudgetBank | None = None,
    ) -> None:
        self.tables = tables
        self.topic = topic
        self.view = view
        self.outputs = outputs
        self.book = book or LeaseBook()
        self.bank_rules = bank_rules or BudgetBank(self.book.policy)
        # What a batch changed: decoded once, written back once at its end.
        self._leases: dict[str, tuple[Lease, EventT[Any]]] = {}
        self._banks: dict[str, tuple[Bank, EventT[Any]]] = {}

    # --- the deciding partition's side ------------------------------------------------

    async def take(self, rules: CampaignRules, t: int, source: EventT[Any]) -> LeaseVerdict:
        """Spend one impression of `rules` at event time `t` from `source`'s partition's lease."""
        lease = self._lease(rules.campaign_id, source)
        verdict, events = self.book.take(lease, Terms.of(rules), t)
        await self._send(events, source)
        return verdict

    async def give_back(self, rules: CampaignRules, t: int, cost: int, source: EventT[Any]) -> None:
        """A reservation `take` covered ended without an ad."""
        lease = self._lease(rules.campaign_id, source)
        await self._send(self.book.give_back(lease, Terms.of(rules), t, cost), source)

    # --- events from budget-leases --------------------------------------------------------

    async def receive(self, source: EventT[Any]) -> tuple[str, int] | None:
        """Apply one `budget-leases` record; the (campaign, partition) of a lease it changed."""
        try:
            event = from_record(decode_lease_record(source.message.value or b""))
        except (InvalidEvent, MoneyError) as exc:
            reason = exc.reason if isinstance(exc, InvalidEvent) else "invalid"
            await self.outputs.dead_letter(source, reason, str(exc))
            return None
        log.debug("lease event in on %s: %s", source.message.tp, event)
        if isinstance(event, LeaseAsk | LeaseReturn):
            await self._to_bank(event, source)
            return None
        if event.partition != source.message.partition:
            return None  # another lease's: grants go to their own partition only
        rules = self.view.get(event.campaign_id)
        terms = Terms.of(rules) if rules is not None else RETIRED
        lease = self._lease(event.campaign_id, source)
        await self._send(self.book.receive(lease, event, terms), source)
        return event.campaign_id, event.partition

    async def _to_bank(self, event: ToBank, source: EventT[Any]) -> None:
        bank = self._bank(event.campaign_id, source)
        events: list[ToPartition] = self._configure(bank)
        events += self.bank_rules.receive(bank, event)
        await self._send(events, source)

    async def configure(self, campaign_id: str, source: EventT[Any]) -> None:
        """The campaign's rules changed: its bank (held on `source`'s partition) follows."""
        await self._send(self._configure(self._bank(campaign_id, source)), source)

    def _configure(self, bank: Bank) -> list[ToPartition]:
        rules = self.view.get(bank.campaign_id)
        if rules is None or (bank.terms is not None and bank.terms.version >= rules.version):
            return []
        return self.bank_rules.configure(bank, Terms.of(rules))

    def holds_bank(self, campaign_id: str) -> bool:
        return campaign_id in self._banks or campaign_id in self.tables.banks

    # --- state and records ----------------------------------------------------------------

    def _lease(self, campaign_id: str, source: EventT[Any]) -> Lease:
        partition = source.message.partition
        key = lease_key(campaign_id, partition)
        held = self._leases.get(key)
        lease = held[0] if held else self.tables.leases.get(key) or Lease(campaign_id, partition)
        self._leases[key] = (lease, source)
        return lease

    def _bank(self, campaign_id: str, source: EventT[Any]) -> Bank:
        held = self._banks.get(campaign_id)
        bank = held[0] if held else self.tables.banks.get(campaign_id) or Bank(campaign_id)
        self._banks[campaign_id] = (bank, source)
        return bank

    async def _send(self, events: list[Any], source: EventT[Any]) -> None:
        for event in events:
            await self._send_one(event, source)

    async def _send_one(self, event: LeaseEvent, source: EventT[Any]) -> None:
        log.debug("lease event out: %s", event)
        # Asks and returns go where the campaign's key hashes (its bank); grants and
        # reclaims to the partition whose lease they fill.
        partition = None if isinstance(event, LeaseAsk | LeaseReturn) else event.partition
        watermark = getattr(event, "watermark", None)
        timestamp = watermark if watermark else round((source.message.timestamp or 0) * 1000)
        await self.outputs.send(
            source,
            self.topic,
            event.campaign_id.encode(),
            encode(to_record(event)),
            timestamp,
            partition,
        )

    def changed_leases(self) -> list[Lease]:
        """The leases this batch read or changed so far."""
        return [lease for lease, _ in self._leases.values()]

    def write(self) -> None:
        """Write the batch's leases and banks to their tables (flushed with the others)."""
        for key, (lease, source) in self._leases.items():
            self.tables.leases.set(key, lease, source)
        for campaign_id, (bank, source) in self._banks.items():
            self.tables.banks.set(campaign_id, bank, source)
        self._leases.clear()
        self._banks.clear()
