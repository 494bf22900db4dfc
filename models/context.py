"""The `SessionContext` every ad request carries, and who the request belongs to.

The edge creates one context per request (`SessionContext.create`); everything downstream reads
it: the worker keys requests by `user_key`, caps by `user_id_of`, and the macro engine
(`streams.macros`) fills `[TIMESTAMP]`, `[CACHEBUSTING]` and `[CORRELATOR]` from it. Its
timestamp is the request's event time, so decisions and macros replay identically.
"""

from __future__ import annotations

import random
import secrets
import time
import uuid
from collections.abc import Mapping

import msgspec

# Bounds of an 8-digit integer: a cachebuster with a leading zero would be 7 digits once an
# upstream parses it as the integer the IAB registry says it is.
_CACHEBUSTING_LOW = 10_000_000
_CACHEBUSTING_SPAN = 90_000_000


class SessionContext(msgspec.Struct, frozen=True):
    """One ad request's identity and event time, as created at the edge."""

    timestamp: int
    """Event time in Unix milliseconds."""
    correlator: str
    """A uuid4 shared by every upstream call made for this request."""
    cachebusting: str
    """8 random digits for `[CACHEBUSTING]`."""
    request_id: str
    """`req-<uuid4>`: the idempotency key of the request."""
    cookies: dict[str, str]
    """The user's cookies as the edge received them (`user_id`, `gdpr`, `gdpr_consent`, ...)."""

    @classmethod
    def create(
        cls,
        cookies: Mapping[str, str] | None = None,
        *,
        timestamp: int | None = None,
        rng: random.Random | None = None,
    ) -> SessionContext:
        """Make a fresh context for one request.

        The wall clock is read here and only here, at the edge: `timestamp` lets a caller that
        already knows the event time (a replay, a test) supply it instead. `rng` draws the ids
        and the cachebuster from a seeded generator instead of the OS, so that synthetic
        traffic (the demo's) is the same on every run.
        """
        if rng is None:
            correlator, request_uuid = uuid.uuid4(), uuid.uuid4()
            buster = secrets.randbelow(_CACHEBUSTING_SPAN)
        else:
            correlator, request_uuid = _uuid4(rng), _uuid4(rng)
            buster = rng.randrange(_CACHEBUSTING_SPAN)
        return cls(
            timestamp=time.time_ns() // 1_000_000 if timestamp is None else timestamp,
            correlator=str(correlator),
            cachebusting=str(_CACHEBUSTING_LOW + buster),
            request_id=f"req-{request_uuid}",
            # A copy: the struct is frozen, and a caller's later edits must not reach it.
            cookies=dict(cookies) if cookies is not None else {},
        )


def _uuid4(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def user_id_of(context: SessionContext) -> str | None:
    """The user's id, or None for an anonymous user (docs/design.md, "What a decision means").

    Anonymous means: no `user_id` cookie, `user_id == "anonymous"`, or `gdpr == "1"` without
    `gdpr_consent == "1"`. An empty `user_id` counts as missing, since capping by it would pool
    every such user under one key.
    """
    cookies = context.cookies
    user_id = cookies.get("user_id")
    if not user_id or user_id == "anonymous":
        return None
    if cookies.get("gdpr") == "1" and cookies.get("gdpr_consent") != "1":
        return None
    return user_id


def user_key(context: SessionContext) -> str:
    """The Kafka key of an ad request: the user id, or the request id for anonymous users."""
    user_id = user_id_of(context)
    return context.request_id if user_id is None else user_id
