"""What `--plot` draws, computed along with the demo's or the audit's summary from the
decisions it already holds (pure: no I/O, no matplotlib; `streams.plot` draws it).

Event time is cut into equal buckets: a minute, or a whole number of minutes so that a long
history has at most `MAX_BUCKETS`. Money stays integer micros.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import get_args

import msgspec

from models.events import DenialReason
from models.money import to_micros
from streams.decision_reader import Decision
from streams.invariants import CapPeak
from streams.state.campaigns import CampaignRules, Cap

MINUTE_MS = 60_000
MAX_BUCKETS = 1_440
OUTCOMES: tuple[str, ...] = ("served", *get_args(DenialReason))
"""In the order charts list them: served, then each denial reason."""


class SpendSeries(msgspec.Struct, frozen=True):
    campaign_id: str
    currency: str
    spent: list[int]
    """Micros spent up to the end of each bucket (cumulative)."""
    lifetime: int | None
    """Lifetime budget in micros under the newest configuration; None: none, or another
    currency."""


class CapBar(msgspec.Struct, frozen=True):
    campaign_id: str
    cap: str
    """As a denial's detail names it (`Cap.label`), e.g. `3/3600s`."""
    max: int
    peak: int
    """The most impressions one user got within one window of the cap."""
    user_id: str | None


class Timeline(msgspec.Struct, frozen=True):
    start_ms: int
    """Event time where the first bucket begins (a whole bucket)."""
    bucket_ms: int
    decisions: dict[str, list[int]]
    """Per outcome (`served` or a denial reason) that occurred, decisions in each bucket."""
    spend: list[SpendSeries]
    """Per campaign and currency served, in the campaigns' order."""
    caps: list[CapBar]

    @property
    def buckets(self) -> int:
        return len(next(iter(self.decisions.values()), []))

    def bucket_starts(self) -> list[int]:
        return [self.start_ms + i * self.bucket_ms for i in range(self.buckets)]


def build(
    decided: Iterable[Decision],
    campaigns: Sequence[CampaignRules],
    peaks: Sequence[CapPeak],
) -> Timeline:
    """`decided`: one served or denied decision per request (dead letters are ignored);
    `campaigns`: the configuration in force last of each; `peaks`: `invariants.cap_peaks`."""
    decisions = [d for d in decided if d.topic in ("served", "denied")]
    times = [d.payload["timestamp"] for d in decisions]
    first, last = min(times, default=0), max(times, default=0)
    bucket_ms = _bucket_ms(first, last)
    start = first // bucket_ms * bucket_ms
    count = 0 if not times else last // bucket_ms - first // bucket_ms + 1

    per_outcome: defaultdict[str, list[int]] = defaultdict(lambda: [0] * count)
    added: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * count)
    for decision, t in zip(decisions, times, strict=True):
        bucket = (t - start) // bucket_ms
        payload = decision.payload
        per_outcome["served" if decision.topic == "served" else str(decision.reason)][bucket] += 1
        if decision.topic == "served":
            key = (payload["campaign_id"], payload["currency"])
            added[key][bucket] += to_micros(payload["cost"])

    return Timeline(
        start_ms=start,
        bucket_ms=bucket_ms,
        decisions={outcome: per_outcome[outcome] for outcome in OUTCOMES if outcome in per_outcome},
        spend=_spend(added, {rules.campaign_id: rules for rules in campaigns}),
        caps=[
            CapBar(
                peak.campaign_id,
                Cap(peak.cap.max, peak.cap.window_s * 1000).label,
                peak.cap.max,
                peak.count,
                peak.user_id,
            )
            for peak in peaks
        ],
    )


def _bucket_ms(first: int, last: int) -> int:
    """Whole minutes, the fewest that cut [first, last] into at most MAX_BUCKETS buckets
    starting on a multiple of the bucket."""
    bucket = -(-((last - first) // MINUTE_MS + 1) // MAX_BUCKETS) * MINUTE_MS
    while last // bucket - first // bucket + 1 > MAX_BUCKETS:
        bucket += MINUTE_MS
    return bucket


def _spend(
    added: Mapping[tuple[str, str], list[int]], rules: Mapping[str, CampaignRules]
) -> list[SpendSeries]:
    order = {campaign_id: i for i, campaign_id in enumerate(rules)}
    series = []
    for (campaign_id, currency), amounts in sorted(
        added.items(), key=lambda item: (order.get(item[0][0], len(order)), item[0])
    ):
        spent, total = [], 0
        for amount in amounts:
            total += amount
            spent.append(total)
        config = rules.get(campaign_id)
        lifetime = config.lifetime_micros if config and config.currency == currency else None
        series.append(SpendSeries(campaign_id, currency, spent, lifetime))
    return series
