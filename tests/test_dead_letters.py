"""The ids a dead-lettered message still tells, for the log line and `adstream tail`: found
when they are there, and never an exception, whatever the bytes."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from models.codec import encode
from streams.dead_letters import Identifiers, identifiers_of, identifiers_of_letter
from tests.pipeline.harness import BASE_MS, request


def test_the_ids_of_a_request_that_failed_validation() -> None:
    original = request("camp", BASE_MS, "user-1")
    invalid = encode(original).replace(b'"placement-1"', b'""')
    found = identifiers_of(invalid)
    context = original.context
    assert found == Identifiers(context.request_id, context.correlator, "camp", "user-1")
    assert found.log_extra() == {"request_id": context.request_id, "correlator": context.correlator}
    assert identifiers_of_letter(base64.b64encode(invalid).decode()) == found


def test_what_is_not_there_or_not_a_string_is_none() -> None:
    for value in (None, b"", b"[1]", b'{"context": 3}', b'{"context": {"request_id": 7}}'):
        assert identifiers_of(value) == Identifiers()
        assert identifiers_of(value).log_extra() == {}
    assert identifiers_of_letter("not base64!") == Identifiers()
    # Invalid UTF-8 inside a JSON string: a UnicodeDecodeError from the decoder, not a crash.
    assert identifiers_of(b'{"context": {"request_id": "r\xff"}}') == Identifiers()


@given(st.binary(max_size=200))
def test_any_bytes_give_identifiers(value: bytes) -> None:
    assert isinstance(identifiers_of(value), Identifiers)
    assert isinstance(identifiers_of(b'{"context": {"x": "' + value + b'"}}'), Identifiers)
