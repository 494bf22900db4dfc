"""Per-campaign spend in integer micros: lifetime, and daily by UTC day of event time.

docs/design.md: an ad is served only if its cost fits both the lifetime and the daily budget;
spend never exceeds a budget, to the micro. Daily totals are kept for the days a late request
can still belong to; a request for a day already dropped is refused (`late`) rather than
charged against a total we no longer know.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

MS_PER_DAY = 86_400_000
DAYS_KEPT = 3
"""Today and the two days before it (of the newest event time seen)."""


def utc_day(t_ms: int) -> int:
    """Days since 1970-01-01 UTC: the daily budget's calendar day."""
    return t_ms // MS_PER_DAY


class Spend(msgspec.Struct):
    lifetime: int = 0
    daily: dict[int, int] = msgspec.field(default_factory=dict)
    """UTC day -> micros spent that day."""
    oldest_day: int = 0
    """Days before this have been dropped."""

    def on_day(self, day: int) -> int:
        return self.daily.get(day, 0)


def exceeded_budget(
    spend: Spend,
    cost: int,
    t_ms: int,
    lifetime_limit: int | None,
    daily_limit: int | None,
    pending_lifetime: int = 0,
    pending_daily: int = 0,
) -> str | None:
    """Which budget `cost` more (plus what is pending) would exceed: `lifetime`, `daily`,
    `daily (late)`, or None when it fits."""
    day = utc_day(t_ms)
    if daily_limit is not None and day < spend.oldest_day:
        return "daily (late)"
    if lifetime_limit is not None and spend.lifetime + pending_lifetime + cost > lifetime_limit:
        return "lifetime"
    if daily_limit is not None and spend.on_day(day) + pending_daily + cost > daily_limit:
        return "daily"
    return None


def charge(spend: Spend, cost: int, t_ms: int) -> None:
    """Add a served impression's cost and drop days no late request can reach."""
    day = utc_day(t_ms)
    spend.lifetime += cost
    if day >= spend.oldest_day:
        spend.daily[day] = spend.on_day(day) + cost
    oldest_kept = max(spend.daily, default=day) - DAYS_KEPT + 1
    if oldest_kept > spend.oldest_day:
        for old in [d for d in spend.daily if d < oldest_kept]:
            del spend.daily[old]
        spend.oldest_day = oldest_kept


def total(spends: Iterable[Spend]) -> Spend:
    """What several partitions' leases of one campaign have spent together."""
    combined = Spend()
    for spent in spends:
        combined.lifetime += spent.lifetime
        for day, micros in spent.daily.items():
            combined.daily[day] = combined.on_day(day) + micros
        combined.oldest_day = max(combined.oldest_day, spent.oldest_day)
    return combined
