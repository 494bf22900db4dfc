"""The decision rules, pure: given a request, its campaign's rules and the state, what happens.

The worker resolves many requests' upstreams at once, so a request may be decided while
earlier ones still hold a *reservation* (cap slot and cost taken, upstream not yet answered).
A reservation that ends without an ad is released, so it must not cost a later request its
ad. `DecisionBook.evaluate` therefore answers one of:

- `Deny`: refused whatever the pending reservations turn into;
- `Reserve`: fits even if every pending reservation is served;
- `Wait`: fits only if some pending reservations are released; decide again once they end.

Deciding again after a `Wait` gives exactly the outcome of deciding the requests one at a
time in stream order, while the upstream calls of all the others overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.events import DenialReason
from streams.state import frequency
from streams.state.campaigns import CampaignRules
from streams.state.frequency import Impressions


@dataclass(frozen=True, slots=True)
class Deny:
    reason: DenialReason
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Reserve:
    cost: int


@dataclass(frozen=True, slots=True)
class Wait:
    on: frozenset[str]
    """Request ids of the pending reservations to see ended first."""


Verdict = Deny | Reserve | Wait


@dataclass(frozen=True, slots=True)
class Reservation:
    request_id: str
    campaign_id: str
    user_id: str | None
    t: int
    cost: int
    keep_ms: int
    keep_count: int
    """How much impression history the campaign keeps (`frequency.kept_ms`, `kept_count`)
    under the rules it was reserved by; a served one of an identified user is recorded so."""

    @property
    def recorded(self) -> bool:
        """Whether it counts for its user's caps once served: every impression of an
        identified user does, capped campaign or not (a cap added later counts it)."""
        return self.user_id is not None

    def record(self, impressions: Impressions) -> None:
        """What serving it does to its user's impressions of its campaign (if `recorded`)."""
        frequency.record(impressions, self.t, self.keep_ms, self.keep_count)


class DecisionBook:
    """The reservations pending in one worker; `evaluate` weighs a request against them."""

    def __init__(self, history_ms: int = frequency.DEFAULT_HISTORY_MS) -> None:
        self._pending: dict[str, Reservation] = {}
        self.history_ms = history_ms
        """The impression history horizon (`ADSTREAM_IMPRESSION_HISTORY_S`)."""

    def keep_ms(self, rules: CampaignRules | None) -> int:
        """How much impression history a campaign with these rules (None: deleted) keeps."""
        return frequency.kept_ms(rules.longest_window_ms if rules else 0, self.history_ms)

    def keep_count(self, rules: CampaignRules) -> int:
        """How many impression times a campaign with these rules keeps at most."""
        return frequency.kept_count(rules.caps)

    def __len__(self) -> int:
        return len(self._pending)

    def evaluate(
        self,
        *,
        request_id: str,
        user_id: str | None,
        t: int,
        rules: CampaignRules | None,
        impressions: Impressions | None,
        aged_out_by: int | None = None,
    ) -> Verdict:
        """The verdict of the rules and caps for one request (its budget is its partition's
        lease: `streams.state.leases`); `impressions` is the committed state.

        `aged_out_by`: the watermark by which cap state of the request's partition was last
        aged out (`ExpiryIndex.swept`), None if none was: the request's key may have been
        dropped whole by it, so a capped request whose windows reach behind what that key
        may have held is refused as late."""
        if rules is None:
            return Deny("campaign_unknown")
        if not rules.active:
            return Deny("campaign_inactive")
        capped = bool(rules.caps) and user_id is not None
        if rules.caps and user_id is None and not rules.anonymous_allowed:
            return Deny("anonymous")
        if capped:
            expired_through = (
                None
                if aged_out_by is None
                else frequency.dropped_through(aged_out_by, self.keep_ms(rules))
            )
            verdict = self._check_caps(
                rules, user_id, t, impressions or Impressions(), expired_through
            )
            if verdict is not None:
                return verdict
        return Reserve(rules.cost_micros)

    def _check_caps(
        self,
        rules: CampaignRules,
        user_id: str | None,
        t: int,
        impressions: Impressions,
        expired_through: int | None,
    ) -> Verdict | None:
        if frequency.is_late(impressions, rules.caps, t, expired_through):
            return Deny("frequency_cap", "late")
        cap = frequency.blocking_cap(impressions.times, rules.caps, t)
        if cap is not None:
            return Deny("frequency_cap", cap.label)
        # Every pending one of this user counts, even one reserved before the campaign had
        # caps: served, it is recorded like any impression.
        mine = [
            r
            for r in self._pending.values()
            if r.recorded and r.campaign_id == rules.campaign_id and r.user_id == user_id
        ]
        if mine:
            # As if every pending one were served: their later times may also push the horizon
            # past t's windows, which one-at-a-time decisions would refuse as late.
            with_pending = Impressions(list(impressions.times), impressions.horizon)
            for r in mine:
                r.record(with_pending)
            if frequency.is_late(with_pending, rules.caps, t) or (
                frequency.blocking_cap(with_pending.times, rules.caps, t) is not None
            ):
                return Wait(frozenset(r.request_id for r in mine))
        return None

    def reservation_for(
        self, request_id: str, rules: CampaignRules, user_id: str | None, t: int, cost: int
    ) -> Reservation:
        """The reservation of a request that got `Reserve(cost)` under `rules`."""
        return Reservation(
            request_id=request_id,
            campaign_id=rules.campaign_id,
            user_id=user_id,
            t=t,
            cost=cost,
            keep_ms=self.keep_ms(rules),
            keep_count=self.keep_count(rules),
        )

    def reserve(self, reservation: Reservation) -> None:
        self._pending[reservation.request_id] = reservation

    def end(self, request_id: str) -> Reservation:
        """Forget a reservation, served or released; the caller commits a served one."""
        return self._pending.pop(request_id)
