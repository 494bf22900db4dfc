"""The events on adstream's public topics (docs/design.md, "Topics" and "Events").

Every message is one JSON object with an integer `schema` field. Money travels as decimal
strings ("2.50") and is turned into integer micros at the boundary (`models.money`).

| topic            | key           | value        |
| ---------------- | ------------- | ------------ |
| `ad-requests`    | user key      | `AdRequest`  |
| `campaigns`      | campaign_id   | `Campaign`   |
| `ad-served`      | campaign_id   | `AdServed`   |
| `ad-denied`      | campaign_id   | `AdDenied`   |
| `ad-requests-dlq`| original key  | `DeadLetter` |
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from models.ad import Hop, ServedAd
from models.context import SessionContext, user_id_of

SCHEMA_VERSION = 1

Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Params = Annotated[dict[str, str], msgspec.Meta(max_length=256)]

# What a campaign may hold: the worker keeps its money in int64-safe micros (msgpack table
# values, the billing ledger's SQLite sums) and its caps' impression lists in changelog records
# under Kafka's record limit. `models.codec.decode_campaign` refuses anything beyond, for
# `adstream campaigns load` and the worker alike (README.md, "Campaign files").
MAX_BUDGET_MICROS = 10**18
"""A lifetime or daily budget: 1e12 currency units. Spend, what is pending in a batch and one
more cost each stay within a budget, so their sum stays under 2**63 (9.2e18) with room."""
MAX_CPM_MICROS = 10**12
"""A CPM: 1e6 currency units, so one impression costs at most 1e3 units (1e9 micros): an
unbudgeted campaign's spend passes 2**63 micros only after 9e9 such impressions."""
MAX_CAP_IMPRESSIONS = 10_000
"""A frequency cap's `max`: a (user, campaign) keeps this many impression times at most
(`streams.state.frequency.MAX_KEPT_IMPRESSIONS`), ~90 KB of changelog record."""
MAX_CAP_WINDOW_S = 400 * 86_400
"""A frequency cap's window: 400 days, over a year of event time."""
MAX_CAPS = 16
"""Frequency caps per campaign: every capped request checks each one."""

DenialReason = Literal[
    "frequency_cap",
    "budget_exhausted",
    "campaign_unknown",
    "campaign_inactive",
    "anonymous",
    "no_fill",
    "upstream_error",
]
AnonymousPolicy = Literal["deny", "uncapped"]


class AdRequest(msgspec.Struct, frozen=True):
    """An edge server asks for an ad of one campaign for one placement."""

    schema: int
    context: SessionContext
    campaign_id: Identifier
    placement_id: Identifier
    params: Params = {}
    """Extra values for macros and for the upstream's query string."""


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lifetime: str | None = None
    """Decimal string; None means no lifetime limit."""
    daily: str | None = None
    """Decimal string per UTC calendar day of event time; None means no daily limit."""


class FrequencyCap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """At most `max` served impressions per user within any `window_s` seconds of event time."""

    max: Annotated[int, msgspec.Meta(ge=1, le=MAX_CAP_IMPRESSIONS)]
    window_s: Annotated[int, msgspec.Meta(ge=1, le=MAX_CAP_WINDOW_S)]


class Campaign(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A campaign's configuration; the latest message per campaign_id is in force.

    Unknown fields are refused: a misspelt `budget` would otherwise load a campaign without
    one, free to spend without limit."""

    schema: int
    campaign_id: Identifier
    active: bool
    vast_url: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    """The upstream VAST tag; may contain macros."""
    cpm: str
    """Decimal string, at most 3 decimal places: one impression costs cpm / 1000."""
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}\\Z")]
    budget: Budget = Budget()
    frequency_caps: Annotated[tuple[FrequencyCap, ...], msgspec.Meta(max_length=MAX_CAPS)] = ()
    anonymous_policy: AnonymousPolicy = "deny"


class RequestFields(msgspec.Struct, frozen=True):
    """What every decision copies from its request (and an audit keeps of one)."""

    request_id: str
    correlator: str
    campaign_id: str
    placement_id: str
    user_id: str | None
    """None for an anonymous user."""
    timestamp: int
    """Event time (Unix ms) of the request."""


def request_fields(request: AdRequest) -> dict[str, Any]:
    """The `RequestFields` of a decision on `request`, as keyword arguments."""
    context = request.context
    return {
        "request_id": context.request_id,
        "correlator": context.correlator,
        "campaign_id": request.campaign_id,
        "placement_id": request.placement_id,
        "user_id": user_id_of(context),
        "timestamp": context.timestamp,
    }


class AdServed(RequestFields, frozen=True):
    schema: int
    cost: str
    currency: str
    ad: ServedAd
    """The ad with impression, error and tracking URLs merged over the chain, macros expanded
    (older records also hold the document in it; decoding ignores it there)."""
    vast: str
    """The final InLine document, macros substituted: carried here only."""
    chain: tuple[Hop, ...]
    campaign_version: int
    """Offset in `campaigns` of the configuration this decision applied."""


class AdDenied(RequestFields, frozen=True):
    schema: int
    reason: DenialReason
    detail: str | None
    """Which cap or budget; the IAB error code for upstream failures."""
    campaign_version: int | None
    """None when the campaign was unknown."""


class DeadLetter(msgspec.Struct, frozen=True):
    """A message the worker could not use, kept for operators: whole up to a bound, else a
    prefix with the original size and hash (`streams.worker.outputs.dead_letter_of`)."""

    schema: int
    key: str | None
    """The original key, base64: whole, or its first bytes when `key_size` is set."""
    value: str | None
    """The original value, base64: whole, or its first bytes when `value_size` is set."""
    topic: str
    partition: int
    offset: int
    error: str
    key_size: int | None = None
    """Set only when `key` holds a prefix: the original key's size in bytes."""
    key_sha256: str | None = None
    """Set only when `key` holds a prefix: the original key's SHA-256, hex."""
    value_size: int | None = None
    """Set only when `value` holds a prefix: the original value's size in bytes."""
    value_sha256: str | None = None
    """Set only when `value` holds a prefix: the original value's SHA-256, hex."""


Decision = AdServed | AdDenied
