"""Dead letters are bounded whatever the message: whole up to a bound, else a prefix with the
original size and hash, and always below the largest record the worker writes."""

from __future__ import annotations

import base64
import hashlib

from models.codec import MAX_RECORD_BYTES, decode, encode
from models.events import DeadLetter
from streams.worker.outputs import (
    KEPT_ERROR_CHARS,
    KEPT_KEY_BYTES,
    KEPT_VALUE_BYTES,
    dead_letter_of,
)


def test_a_small_message_is_kept_whole() -> None:
    key, letter = dead_letter_of("ad-requests", 2, 7, b"k", b"\x00\xff", "undecodable: x")
    assert key == b"k"
    assert base64.b64decode(letter.value or "") == b"\x00\xff"
    assert (letter.key_size, letter.value_size, letter.value_sha256) == (None, None, None)
    assert letter.error == "undecodable: x"
    assert decode(encode(letter), DeadLetter, max_bytes=None) == letter


def test_the_largest_message_gives_a_bounded_record() -> None:
    huge_key = b"\xfe" * (4 * KEPT_KEY_BYTES)
    huge_value = b"\x00" * (8 << 20)
    key, letter = dead_letter_of("ad-requests", 0, 1, huge_key, huge_value, "e" * 100_000)
    record = encode(letter)
    assert len(record) + len(key or b"") < MAX_RECORD_BYTES
    assert key == huge_key[:KEPT_KEY_BYTES]
    assert base64.b64decode(letter.value or "") == huge_value[:KEPT_VALUE_BYTES]
    assert letter.value_size == len(huge_value)
    assert letter.value_sha256 == hashlib.sha256(huge_value).hexdigest()
    assert letter.key_size == len(huge_key)
    assert letter.key_sha256 == hashlib.sha256(huge_key).hexdigest()
    assert len(letter.error) == KEPT_ERROR_CHARS


def test_a_cut_is_said_in_the_error() -> None:
    value = b"x" * (KEPT_VALUE_BYTES + 1)
    _, letter = dead_letter_of("ad-requests", 0, 1, None, value, "oversize: too big")
    assert letter.error == (
        f"oversize: too big (value kept as its first {KEPT_VALUE_BYTES:,} of {len(value):,} bytes)"
    )
    assert letter.key is None and letter.key_size is None
