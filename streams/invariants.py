"""Invariant 2 of docs/design.md recomputed from the served decisions alone, by brute force, the
way an auditor replaying `ad-served` would: no (user, campaign) over a cap in any window, no
campaign over a budget. Money in integer micros; days are UTC days of event time.

Two flavours. `cap_violations` and `budget_violations` hold every decision of a campaign to one
configuration (what the demo and the pipeline tests loaded). `cap_breaches` and
`budget_breaches` hold each decision to the configuration it names (`campaign_version`), as
`adstream audit` does over a history in which campaigns change, and name the request that
broke a rule.

How the second flavour stays sound without knowing the worker's order of decisions: per
campaign the worker decides in one stream order, and a campaign's versions (offsets) only grow
along it. So, of a set of served impressions, the one decided last applied the highest
`campaign_version` among them, and it was decided knowing all the others (committed, or
reserved as if served). Hence for any window of a cap (or any set of a campaign's charges) the
rules of the highest version in it must hold for all of it. `ad-served` is keyed by campaign, so
a campaign's records sit in one partition in commit order: the prefix up to a record is a set
of impressions like any other, and the first record whose prefix breaks a rule is the one named.
With one configuration per campaign this is the plain rule; across updates it flags nothing a
correct worker could do, and may miss a breach that only an older version's rules forbid.

A worker keeps each user's impressions for its impression history (`ADSTREAM_IMPRESSION_HISTORY_S`)
or the longest window of the campaign's caps if that is longer, so a window longer than the
history counts only the history's worth of what was served before its cap was added or
lengthened. Given that history, `cap_breaches` holds such a cap to the part of its window the
worker is sure to have counted: the last `history_ms` of it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Literal, Protocol

import msgspec

from models.events import Campaign, FrequencyCap
from models.money import from_micros, to_micros
from streams.decision_reader import Decision
from streams.state.campaigns import CampaignRules, Cap

DAY_MS = 86_400_000


class Capped(Protocol):
    """What the cap checks read of a campaign: a `Campaign`, or the caps of a configuration."""

    @property
    def frequency_caps(self) -> tuple[FrequencyCap, ...]: ...


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
    served: Iterable[Decision], campaigns: Mapping[str, Capped]
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


def cap_peaks(served: Iterable[Decision], campaigns: Mapping[str, Capped]) -> list[CapPeak]:
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


# Each decision held to the configuration it names.

Versions = Mapping[tuple[str, int], CampaignRules]
"""(campaign_id, campaign_version) -> the rules of that configuration."""


class Breach(msgspec.Struct, frozen=True):
    """A served decision that broke a cap or a budget of the configuration in force."""

    request_id: str
    kind: Literal["cap_exceeded", "budget_exceeded"]
    detail: str


def _topic_order(served: Iterable[Decision]) -> dict[str, list[Decision]]:
    """Each campaign's served decisions in the order of `ad-served` (partition, offset)."""
    by_campaign: defaultdict[str, list[Decision]] = defaultdict(list)
    for decision in sorted(served, key=lambda d: (d.partition, d.offset)):
        by_campaign[decision.payload["campaign_id"]].append(decision)
    return by_campaign


def _newest(versions: Versions, campaign_id: str, *named: int | None) -> int | None:
    """The highest of these versions that names a known configuration."""
    known = [v for v in named if v is not None and (campaign_id, v) in versions]
    return max(known, default=None)


def cap_breaches(
    served: Iterable[Decision], versions: Versions, history_ms: int | None = None
) -> list[Breach]:
    """Served decisions after which some window of a user's impressions holds more than a cap
    of the newest configuration among them allows. Anonymous impressions count for no one.

    For every window width any configuration of the campaign caps, each window containing the
    new impression is looked at (those ending at it or at a later impression within a width),
    and checked against each cap of the newest version in it that is at least as wide. With
    `history_ms` (the worker's impression history), a cap's window is cut to that width.
    """
    found = []
    for campaign_id, decisions in _topic_order(served).items():
        widths = sorted(
            {_width(cap, history_ms) for (cid, _), rules in versions.items()
             if cid == campaign_id for cap in rules.caps}
        )  # fmt: skip
        if not widths:
            continue
        users: defaultdict[str, list[tuple[int, int, int | None]]] = defaultdict(list)
        for serial, decision in enumerate(decisions):
            payload = decision.payload
            if payload["user_id"] is None:
                continue
            seen = users[payload["user_id"]]
            t = payload["timestamp"]
            insort(seen, (t, serial, payload["campaign_version"]))
            detail = _window_over_cap(seen, t, widths, versions, campaign_id, history_ms)
            if detail is not None:
                found.append(
                    Breach(payload["request_id"], "cap_exceeded", f"{payload['user_id']}: {detail}")
                )
    return found


def _window_over_cap(
    seen: list[tuple[int, int, int | None]],
    t: int,
    widths: list[int],
    versions: Versions,
    campaign_id: str,
    history_ms: int | None,
) -> str | None:
    times = [item[0] for item in seen]
    for width in widths:
        ends = [t, *times[bisect_right(times, t) : bisect_left(times, t + width)]]
        for end in ends:
            first, last = bisect_right(times, end - width), bisect_right(times, end)
            count = last - first
            newest = _newest(versions, campaign_id, *(item[2] for item in seen[first:last]))
            if newest is None:
                continue
            for cap in versions[(campaign_id, newest)].caps:
                if _width(cap, history_ms) >= width and count > cap.max:
                    return (
                        f"{count} impressions in the {width // 1000}s up to {utc(end)} "
                        f"> cap {cap.label} of version {newest}"
                    )
    return None


def _width(cap: Cap, history_ms: int | None) -> int:
    """The part of a cap's window a worker keeping `history_ms` is sure to count."""
    return cap.window_ms if history_ms is None else min(cap.window_ms, history_ms)


def utc(t_ms: int) -> str:
    """An event time as findings show it: `2026-11-27T12:00:00.000Z` (exact to the ms)."""
    moment = datetime.fromtimestamp(t_ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{t_ms % 1000:03d}Z"


def budget_breaches(served: Iterable[Decision], versions: Versions) -> list[Breach]:
    """Served decisions after which a campaign's spend (lifetime, or that UTC day's) is more
    than the budget of the newest configuration among the decisions counted."""
    found = []
    for campaign_id, decisions in _topic_order(served).items():
        lifetime, lifetime_version = 0, None
        days: dict[int, tuple[int, int | None]] = {}
        for decision in decisions:
            payload = decision.payload
            cost, named = to_micros(payload["cost"]), payload["campaign_version"]
            day = payload["timestamp"] // DAY_MS
            lifetime += cost
            lifetime_version = _newest(versions, campaign_id, lifetime_version, named)
            day_spent, day_version = days.get(day, (0, None))
            day_spent += cost
            day_version = _newest(versions, campaign_id, day_version, named)
            days[day] = (day_spent, day_version)
            problems = []
            if lifetime_version is not None:
                limit = versions[(campaign_id, lifetime_version)].lifetime_micros
                if limit is not None and lifetime > limit:
                    problems.append(
                        f"lifetime spend {from_micros(lifetime)} > budget {from_micros(limit)} "
                        f"of version {lifetime_version}"
                    )
            if day_version is not None:
                limit = versions[(campaign_id, day_version)].daily_micros
                if limit is not None and day_spent > limit:
                    problems.append(
                        f"spend on {utc(day * DAY_MS)[:10]} {from_micros(day_spent)} > daily "
                        f"budget {from_micros(limit)} of version {day_version}"
                    )
            if problems:
                found.append(
                    Breach(
                        payload["request_id"],
                        "budget_exceeded",
                        f"{campaign_id}: " + "; ".join(problems),
                    )
                )
    return found
