"""Invariant 2 of DESIGN.md recomputed from the served decisions alone, by brute force, the
way an auditor replaying `ad-served` would: no (user, campaign) over a cap in any window, no
campaign over a budget. Money in integer micros; days are UTC days of event time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping

import msgspec

from models.events import Campaign, FrequencyCap
from models.money import to_micros
from streams.decisions import Decision

DAY_MS = 86_400_000


class CapPeak(msgspec.Struct, frozen=True):
    """The most impressions one user was served for a campaign within any window of a cap."""

    campaign_id: str
    cap: FrequencyCap
    count: int
    user_id: str | None
    """Whose peak it is (the first such user); None when nobody identified was served."""

    @property
    def exceeded(self) -> bool:
        return self.count > self.cap.max


def _peak(times: list[int], window_ms: int) -> int:
    """The most of the sorted `times` inside one window `(t - window_ms, t]`."""
    peak, first = 0, 0
    for last, end in enumerate(times):
        while times[first] <= end - window_ms:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def _peaks_per_user(
    served: Iterable[Decision], campaigns: Mapping[str, Campaign]
) -> Iterator[tuple[str, str, FrequencyCap, int]]:
    """(user_id, campaign_id, cap, peak) for every identified user served by a capped
    campaign. Anonymous impressions count for no one: they cannot be capped."""
    times: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for decision in served:
        payload = decision.payload
        if payload["user_id"] is not None:
            times[(payload["user_id"], payload["campaign_id"])].append(payload["timestamp"])
    for (user_id, campaign_id), served_at in sorted(times.items()):
        served_at.sort()
        for cap in campaigns[campaign_id].frequency_caps:
            yield user_id, campaign_id, cap, _peak(served_at, cap.window_s * 1000)


def cap_peaks(served: Iterable[Decision], campaigns: Mapping[str, Campaign]) -> list[CapPeak]:
    """One `CapPeak` per cap of every campaign, in the campaigns' and caps' order."""
    best: dict[tuple[str, FrequencyCap], tuple[int, str | None]] = {}
    for user_id, campaign_id, cap, peak in _peaks_per_user(served, campaigns):
        key = (campaign_id, cap)
        if peak > best.get(key, (0, None))[0]:
            best[key] = (peak, user_id)
    return [
        CapPeak(campaign_id, cap, *best.get((campaign_id, cap), (0, None)))
        for campaign_id, campaign in campaigns.items()
        for cap in campaign.frequency_caps
    ]


def cap_violations(served: Iterable[Decision], campaigns: Mapping[str, Campaign]) -> list[str]:
    """Every (user, campaign, cap) whose busiest window holds more than the cap allows."""
    return [
        f"{user_id}/{campaign_id}: {peak} > {cap.max} in {cap.window_s}s"
        for user_id, campaign_id, cap, peak in _peaks_per_user(served, campaigns)
        if peak > cap.max
    ]


def spend_by_campaign(served: Iterable[Decision]) -> dict[str, int]:
    totals: defaultdict[str, int] = defaultdict(int)
    for decision in served:
        totals[decision.payload["campaign_id"]] += to_micros(decision.payload["cost"])
    return dict(totals)


def spend_by_day(served: Iterable[Decision]) -> dict[tuple[str, int], int]:
    """Micros per (campaign_id, UTC day number of event time)."""
    totals: defaultdict[tuple[str, int], int] = defaultdict(int)
    for decision in served:
        payload = decision.payload
        totals[(payload["campaign_id"], payload["timestamp"] // DAY_MS)] += to_micros(
            payload["cost"]
        )
    return dict(totals)


def budget_violations(served: Iterable[Decision], campaigns: Mapping[str, Campaign]) -> list[str]:
    served = list(served)
    found = []
    for campaign_id, total in spend_by_campaign(served).items():
        budget = campaigns[campaign_id].budget
        if budget.lifetime is not None and total > to_micros(budget.lifetime):
            found.append(f"{campaign_id}: lifetime {total} > {budget.lifetime}")
    for (campaign_id, day), total in spend_by_day(served).items():
        budget = campaigns[campaign_id].budget
        if budget.daily is not None and total > to_micros(budget.daily):
            found.append(f"{campaign_id}: day {day} spent {total} > {budget.daily}")
    return found
