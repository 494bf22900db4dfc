"""The demo's ad-request stream: realistic, pure and seeded (the same plan gives the same bytes).

What edge servers would send over a few hours: requests at random moments (a Poisson process),
from users of very different appetites (a Zipf law: a few heavy users meet their caps), some
anonymous, some re-sent by an edge that timed out, a few broken by a buggy or newer edge, and
some for a campaign that no longer exists. Every message is the Kafka record the edge would
publish (`streams.edge`), so the worker sees exactly what production would.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from models.codec import InvalidReason
from models.context import SessionContext, user_id_of
from models.events import SCHEMA_VERSION, AdRequest, Campaign
from streams.edge import RequestRecord, request_record

HOUR_MS = 3_600_000
UNKNOWN_CAMPAIGN = "spring-sale-2019"
"""Requested by edges that still have a campaign nobody loads any more."""
PLACEMENTS = ("home-preroll", "article-midroll", "video-postroll")
SECTIONS = ("news", "sport", "travel", "tech", "food")
PAUSED_WEIGHT = 0.1
"""Edges still ask for a paused campaign, ten times less often than for a running one."""
ZIPF_EXPONENT = 1.0
"""User i (from 1) sends a share proportional to 1/i**ZIPF_EXPONENT of the requests."""
MAX_RESEND_DELAY = 20
"""A duplicate follows its original within this many messages (an edge's quick retry)."""

Kind = Literal["request", "duplicate", "malformed"]


class TrafficPlan(msgspec.Struct, frozen=True):
    end_ms: int
    """Event times lie in the `hours` before this (the broker refuses records stamped more
    than an hour ahead of its clock, so pass a time that is not in the future)."""
    requests: int = 5000
    """Messages in all: distinct requests, duplicates and malformed ones."""
    users: int = 300
    hours: float = 6.0
    seed: int = 7
    anonymous_share: float = 0.10
    duplicate_share: float = 0.02
    malformed_share: float = 0.002
    unknown_campaign_share: float = 0.01

    @property
    def start_ms(self) -> int:
        return self.end_ms - round(self.hours * HOUR_MS)

    @property
    def malformed(self) -> int:
        """At least one of each kind of breakage."""
        return max(len(MALFORMATIONS), round(self.requests * self.malformed_share))

    @property
    def duplicates(self) -> int:
        return round(self.requests * self.duplicate_share)

    @property
    def distinct(self) -> int:
        return self.requests - self.malformed - self.duplicates


class Message(msgspec.Struct, frozen=True):
    kind: Kind
    record: RequestRecord
    request_id: str | None = None
    """The request's id; None for a malformed message."""
    anonymous: bool = False
    dead_letter_reason: InvalidReason | None = None
    """For a malformed message: the reason the worker's DLQ must give."""


class Traffic(msgspec.Struct, frozen=True):
    plan: TrafficPlan
    messages: list[Message]

    @property
    def request_ids(self) -> set[str]:
        """The valid, distinct requests: each must get exactly one decision."""
        return {m.request_id for m in self.messages if m.kind == "request" and m.request_id}

    def count(self, kind: Kind) -> int:
        return sum(1 for message in self.messages if message.kind == kind)

    @property
    def anonymous(self) -> int:
        return sum(
            1 for message in self.messages if message.kind == "request" and message.anonymous
        )


def _break_json(valid: dict[str, Any]) -> bytes:
    encoded = msgspec.json.encode(valid)
    return encoded[: len(encoded) // 2]  # an edge that died mid-write


def _wrong_types(valid: dict[str, Any]) -> bytes:
    return msgspec.json.encode({**valid, "campaign_id": 1042, "placement_id": ["home-preroll"]})


def _future_schema(valid: dict[str, Any]) -> bytes:
    return msgspec.json.encode({**valid, "schema": SCHEMA_VERSION + 1, "consent": {"tcf": "v3"}})


def _seconds_not_ms(valid: dict[str, Any]) -> bytes:
    context = valid["context"]
    return msgspec.json.encode(
        {**valid, "context": {**context, "timestamp": context["timestamp"] // 1000}}
    )


MALFORMATIONS: tuple[tuple[Callable[[dict[str, Any]], bytes], InvalidReason], ...] = (
    (_break_json, "undecodable"),
    (_wrong_types, "invalid"),
    (_future_schema, "schema_version"),
    (_seconds_not_ms, "invalid"),
)


def generate(plan: TrafficPlan, campaigns: Sequence[Campaign]) -> Traffic:
    """The plan's messages in publishing order (event time, with duplicates a little late)."""
    if plan.distinct < 1 or plan.users < 1 or plan.hours <= 0:
        raise ValueError(f"nothing to generate from {plan}")
    rng = random.Random(plan.seed)
    users = [f"user-{index:04d}" for index in range(1, plan.users + 1)]
    consenting = frozenset(users[4::5])  # in the EU, and have given consent
    user_weights = [1 / rank**ZIPF_EXPONENT for rank in range(1, plan.users + 1)]
    campaign_ids = [campaign.campaign_id for campaign in campaigns]
    campaign_weights = [1.0 if campaign.active else PAUSED_WEIGHT for campaign in campaigns]

    def make_request(at_ms: int) -> AdRequest:
        user = rng.choices(users, user_weights)[0]
        cookies = {"user_id": user}
        if user in consenting:
            cookies |= {"gdpr": "1", "gdpr_consent": "1"}
        # Anonymous: a browser without cookies, a user who refused consent, an opt-out.
        if rng.random() < plan.anonymous_share:
            cookies = rng.choice([{}, {"user_id": user, "gdpr": "1"}, {"user_id": "anonymous"}])
        if rng.random() < plan.unknown_campaign_share:
            campaign_id = UNKNOWN_CAMPAIGN
        else:
            campaign_id = rng.choices(campaign_ids, campaign_weights)[0]
        section = rng.choice(SECTIONS)
        params = {
            "page_url": f"https://news.example/{section}/{rng.randrange(1, 500)}",
            "player_size": rng.choice(["640,360", "1280,720"]),
        }
        context = SessionContext.create(cookies, timestamp=at_ms, rng=rng)
        return AdRequest(SCHEMA_VERSION, context, campaign_id, rng.choice(PLACEMENTS), params)

    # Uniform moments in the window, sorted: the arrivals of a Poisson process.
    times = sorted(rng.randrange(plan.start_ms, plan.end_ms) for _ in range(plan.distinct))
    originals = []
    for at_ms in times:
        request = make_request(at_ms)
        anonymous = user_id_of(request.context) is None
        originals.append(
            Message("request", request_record(request), request.context.request_id, anonymous)
        )
    # Sort keys place each message: originals at their index, a duplicate a few messages
    # after its original, a malformed message at a random place.
    placed: list[tuple[int, int, Message]] = [(i, 0, m) for i, m in enumerate(originals)]
    for index in rng.sample(range(len(originals)), plan.duplicates):
        original = originals[index]
        resend = msgspec.structs.replace(original, kind="duplicate")
        placed.append((index + rng.randint(1, MAX_RESEND_DELAY), 1, resend))
    for number in range(plan.malformed):
        index = rng.randrange(len(originals))
        break_it, reason = MALFORMATIONS[number % len(MALFORMATIONS)]
        # A request of its own (never sent whole), so no valid request loses its message.
        spoiled = request_record(make_request(times[index]))
        value = break_it(msgspec.json.decode(spoiled.value))
        record = RequestRecord(spoiled.key, value, spoiled.timestamp_ms)
        placed.append((index, 2, Message("malformed", record, dead_letter_reason=reason)))
    placed.sort(key=lambda item: item[:2])
    return Traffic(plan, [message for _, _, message in placed])
