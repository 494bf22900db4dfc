"""adstream's event schema: the msgspec Structs that travel on the topics."""

from models.ad import Creative, CreativeKind, Hop, MediaFile, ServedAd, Tracking, ViewableImpression
from models.codec import (
    MAX_EVENT_BYTES,
    MAX_RECORD_BYTES,
    InvalidEvent,
    decode,
    decode_campaign,
    decode_request,
    encode,
)
from models.context import SessionContext, user_id_of, user_key
from models.events import (
    SCHEMA_VERSION,
    AdDenied,
    AdRequest,
    AdServed,
    Budget,
    Campaign,
    DeadLetter,
    Decision,
    DenialReason,
    FrequencyCap,
    RequestFields,
    request_fields,
)
from models.money import MoneyError, from_micros, to_micros

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_RECORD_BYTES",
    "SCHEMA_VERSION",
    "AdDenied",
    "AdRequest",
    "AdServed",
    "Budget",
    "Campaign",
    "Creative",
    "CreativeKind",
    "DeadLetter",
    "Decision",
    "DenialReason",
    "FrequencyCap",
    "Hop",
    "InvalidEvent",
    "MediaFile",
    "MoneyError",
    "RequestFields",
    "ServedAd",
    "SessionContext",
    "Tracking",
    "ViewableImpression",
    "decode",
    "decode_campaign",
    "decode_request",
    "encode",
    "from_micros",
    "request_fields",
    "to_micros",
    "user_id_of",
    "user_key",
]
