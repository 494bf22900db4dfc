"""What an edge server publishes to `ad-requests`: one record per `AdRequest`.

DESIGN.md fixes the record: the value is the encoded request, the key its user key (so a
user's requests stay in order on one partition, where their caps are kept), and the record
timestamp its event time (so the decisions, stamped the same way, line up with it).
"""

from __future__ import annotations

import msgspec

from models.codec import encode
from models.context import user_key
from models.events import AdRequest


class RequestRecord(msgspec.Struct, frozen=True):
    key: bytes
    value: bytes
    timestamp_ms: int


def request_record(request: AdRequest) -> RequestRecord:
    context = request.context
    return RequestRecord(user_key(context).encode(), encode(request), context.timestamp)
