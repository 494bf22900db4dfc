"""What a dead-lettered message still tells about its request, when it tells anything: the
ids an operator searches logs and topics by. Best effort by nature: the message was dead-
lettered because it did not decode as a request."""

from __future__ import annotations

import base64
import binascii

import msgspec


class Identifiers(msgspec.Struct, frozen=True):
    request_id: str | None = None
    correlator: str | None = None
    campaign_id: str | None = None
    user_id: str | None = None
    """The `user_id` cookie as sent, without the anonymity rules (none may apply: the request
    was never valid)."""

    def log_extra(self) -> dict[str, str]:
        """The ids a log line carries (`streams.logs`), those the message had."""
        ids = {"request_id": self.request_id, "correlator": self.correlator}
        return {name: value for name, value in ids.items() if value is not None}


def identifiers_of(value: bytes | None) -> Identifiers:
    """The ids of a message's value, those that are there and are strings; never raises,
    whatever the bytes (it runs while a dead letter is written)."""
    try:
        decoded = msgspec.json.decode(value or b"")
    # DecodeError, and UnicodeDecodeError for bad UTF-8 inside a string: both ValueErrors.
    except (ValueError, RecursionError):
        return Identifiers()
    document: dict[str, object] = decoded if isinstance(decoded, dict) else {}
    context = _mapping(document, "context")
    return Identifiers(
        _string(context, "request_id"),
        _string(context, "correlator"),
        _string(document, "campaign_id"),
        _string(_mapping(context, "cookies"), "user_id"),
    )


def _mapping(document: object, name: str) -> dict[str, object]:
    found = document.get(name) if isinstance(document, dict) else None
    return found if isinstance(found, dict) else {}


def _string(document: dict[str, object], name: str) -> str | None:
    found = document.get(name)
    return found if isinstance(found, str) else None


def identifiers_of_letter(value_b64: str | None) -> Identifiers:
    """The ids of the message a `DeadLetter` keeps (its `value`, base64)."""
    if value_b64 is None:
        return Identifiers()
    try:
        return identifiers_of(base64.b64decode(value_b64, validate=True))
    except binascii.Error:
        return Identifiers()
