"""Generated hostile input for the worker's two input topics, each message with the dead-letter
reason it must get.

Every generator breaks a message in a way whose outcome is fixed by construction (an invalid
UTF-8 byte inside a string is undecodable wherever it lands; a key given twice is invalid
whatever the key), so the audit can hold the worker to the exact reason, not just "somewhere
in the DLQ". The random choices (which string, which key, which byte, how deep, how large)
come from one seeded `random.Random`, so a failing run can be replayed.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from models.codec import encode
from models.events import Campaign
from tests.pipeline.harness import BASE_MS, request

InputTopic = Literal["requests", "campaigns"]

INVALID_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88")
"""Bytes that are never UTF-8 where they stand: stray, truncated, surrogate, overlong."""


@dataclass
class Raw:
    """A message published as it is (broken input), with the DLQ reason it must get."""

    key: bytes
    value: bytes | None
    reason: str
    topic: InputTopic = "requests"
    kind: str = ""
    """Which generator made it, for the report."""


def _unique_key() -> bytes:
    return f"bad-{uuid.uuid4().hex[:12]}".encode()


def _strings(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every non-empty string in a decoded JSON value."""
    if isinstance(value, str):
        return [path] if value else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _strings(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _strings(v, (*path, i))]
    return []


def _objects(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every non-empty JSON object in a decoded JSON value."""
    if isinstance(value, dict):
        here = [path] if value else []
        return here + [p for k, v in value.items() for p in _objects(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _objects(v, (*path, i))]
    return []


def _at(value: Any, path: Sequence[Any]) -> Any:
    for step in path:
        value = value[step]
    return value


def with_invalid_utf8(rng: random.Random, message: dict[str, Any]) -> bytes:
    """`message` with a non-UTF-8 sequence inside one of its strings, chosen at random."""
    path = rng.choice(_strings(message))
    marker = f"\x00{uuid.uuid4().hex}\x00"
    target = _at(message, path[:-1]) if path else message
    original = target[path[-1]]
    cut = rng.randrange(len(original) + 1)
    target[path[-1]] = original[:cut] + marker + original[cut:]
    encoded = json.dumps(message).encode()
    escaped = json.dumps(marker)[1:-1].encode()
    return encoded.replace(escaped, rng.choice(INVALID_UTF8))


def with_duplicate_key(rng: random.Random, message: dict[str, Any]) -> bytes:
    """`message` with one key of one of its objects given twice (first a copy of its value)."""
    path = rng.choice(_objects(message))
    target = _at(message, path)
    name = rng.choice(list(target))
    marker = f"dup-{uuid.uuid4().hex}"
    target[marker] = target[name]
    encoded = json.dumps(message).encode()
    return encoded.replace(json.dumps(marker).encode(), json.dumps(name).encode())


def deeply_nested(rng: random.Random) -> bytes:
    depth = rng.randrange(2_000, 30_000)
    return b'{"schema": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"


def request_fuzz(
    rng: random.Random, campaign_ids: Sequence[str], *, huge_share: float
) -> Callable[[], Raw]:
    """A maker of hostile `ad-requests` messages, a kind at random each call."""

    def valid() -> dict[str, Any]:
        made = request(
            rng.choice(campaign_ids),
            BASE_MS + rng.randrange(3_600_000),
            f"fuzz-user-{rng.randrange(1000)}",
            params={"site": "example.com", "n": str(rng.randrange(100))},
        )
        decoded: dict[str, Any] = msgspec.json.decode(encode(made))
        return decoded

    def extreme_number() -> bytes:
        message = valid()
        field, value = rng.choice(
            [
                ("timestamp", 10**20),
                ("timestamp", -(10**20)),
                ("timestamp", -1),
                ("timestamp", 1e308),
                ("timestamp", 0),
            ]
        )
        message["context"][field] = value
        return json.dumps(message).encode()

    makers: list[tuple[str, str, Callable[[], bytes | None]]] = [
        ("random bytes", "undecodable", lambda: b"\xff" + rng.randbytes(rng.randrange(2000))),
        ("invalid UTF-8 in a string", "undecodable", lambda: with_invalid_utf8(rng, valid())),
        ("truncated JSON", "undecodable", lambda: _truncated(rng, encode_json(valid()))),
        ("key given twice", "invalid", lambda: with_duplicate_key(rng, valid())),
        ("deeply nested JSON", "undecodable", lambda: deeply_nested(rng)),
        ("extreme number", "invalid", extreme_number),
        ("not an object", "invalid", lambda: rng.choice([b"[]", b'"ad"', b"null", b"1e999"])),
        ("null value", "undecodable", lambda: None),
        ("over 64 KiB", "oversize", lambda: _padded(valid(), rng.randrange(65_537, 200_000))),
    ]

    def make() -> Raw:
        if rng.random() < huge_share:
            # Nearly a megabyte: kept in the DLQ as a prefix with its size and hash.
            return Raw(_unique_key(), _padded(valid(), 990_000), "oversize", kind="~1 MB")
        kind, reason, maker = rng.choice(makers)
        key = _unique_key()
        if rng.random() < 0.01:
            key = key + b"k" * 100_000  # a huge key too: kept as a prefix
        return Raw(key, maker(), reason, kind=kind)

    return make


def campaign_fuzz(rng: random.Random, campaigns: Sequence[Campaign]) -> Callable[[], Raw]:
    """A maker of hostile `campaigns` records, each keyed by a campaign in force: none may
    change the configuration in force."""

    def valid(rules: Campaign) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(encode(rules))
        decoded["budget"] = {"lifetime": None, "daily": None}  # would lift a budget if taken
        return decoded

    def unknown_field(message: dict[str, Any]) -> bytes:
        message["bugdet"] = {"lifetime": "1.00"}
        return json.dumps(message).encode()

    def out_of_range(message: dict[str, Any]) -> bytes:
        message["budget"] = {"lifetime": "999999999999999.00", "daily": None}
        return json.dumps(message).encode()

    makers: list[tuple[str, str, Callable[[dict[str, Any]], bytes]]] = [
        ("invalid UTF-8 in a string", "undecodable", lambda m: with_invalid_utf8(rng, m)),
        ("key given twice", "invalid", lambda m: with_duplicate_key(rng, m)),
        ("unknown field", "invalid", unknown_field),
        ("budget out of range", "invalid", out_of_range),
        ("truncated JSON", "undecodable", lambda m: _truncated(rng, encode_json(m))),
    ]

    def make() -> Raw:
        rules = rng.choice(campaigns)
        kind, reason, maker = rng.choice(makers)
        return Raw(
            rules.campaign_id.encode(),
            maker(valid(rules)),
            reason,
            topic="campaigns",
            kind=f"campaign: {kind}",
        )

    return make


def encode_json(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _truncated(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data) - 1)]


def _padded(message: dict[str, Any], size: int) -> bytes:
    """`message` grown to about `size` bytes by one long param value."""
    message["params"]["pad"] = "x" * max(size - len(encode_json(message)), 0)
    return encode_json(message)
