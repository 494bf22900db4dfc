"""Invariant checks over a set of decisions, by brute force (DESIGN.md, "Invariants")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from models.events import Campaign
from models.money import to_micros
from tests.pipeline.harness import Decision


def cap_violations(served: Iterable[Decision], campaigns: dict[str, Campaign]) -> list[str]:
    """Every (user, campaign) window that holds more served impressions than a cap allows."""
    times: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for decision in served:
        payload = decision.payload
        if payload["user_id"] is not None:
            times[(payload["user_id"], payload["campaign_id"])].append(payload["timestamp"])
    found = []
    for (user_id, campaign_id), served_at in times.items():
        served_at.sort()
        for cap in campaigns[campaign_id].frequency_caps:
            window = cap.window_s * 1000
            for end in served_at:
                inside = sum(1 for t in served_at if end - window < t <= end)
                if inside > cap.max:
                    found.append(
                        f"{user_id}/{campaign_id}: {inside} > {cap.max} in {cap.window_s}s"
                    )
    return found


def spend_by_campaign(served: Iterable[Decision]) -> dict[str, int]:
    totals: defaultdict[str, int] = defaultdict(int)
    for decision in served:
        totals[decision.payload["campaign_id"]] += to_micros(decision.payload["cost"])
    return dict(totals)


def budget_violations(served: Iterable[Decision], campaigns: dict[str, Campaign]) -> list[str]:
    found = []
    daily: defaultdict[tuple[str, int], int] = defaultdict(int)
    served = list(served)
    for decision in served:
        payload = decision.payload
        daily[(payload["campaign_id"], payload["timestamp"] // 86_400_000)] += to_micros(
            payload["cost"]
        )
    for campaign_id, total in spend_by_campaign(served).items():
        budget = campaigns[campaign_id].budget
        if budget.lifetime is not None and total > to_micros(budget.lifetime):
            found.append(f"{campaign_id}: lifetime {total} > {budget.lifetime}")
    for (campaign_id, day), total in daily.items():
        budget = campaigns[campaign_id].budget
        if budget.daily is not None and total > to_micros(budget.daily):
            found.append(f"{campaign_id}: day {day} spent {total} > {budget.daily}")
    return found
