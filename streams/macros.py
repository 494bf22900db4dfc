"""IAB VAST 4.x macro substitution for upstream request URLs and tracking pixels.

Who fires a URL fills its macros, since only they know the values at that moment
(`[ADPLAYHEAD]`, `[ASSETURI]`, `[REASON]`, the `[TIMESTAMP]` of the firing). The VAST resolver
(`streams.vast`) builds one `Macros` per ad request and expands the URLs it requests itself:
the campaign's tag, each `VASTAdTagURI`, the error pixels it fires. The URLs it hands on
(impressions, tracking, clicks, errors, verification, viewability) keep their macros, for the
player or for an edge that fires them server-side with `expand`. Every macro of IAB's registry
is known here, in both spellings `[NAME]` and `%%NAME%%`, plus `[CORRELATOR]` from the session
guide. A value comes from:

1. the `SessionContext`, always, for `TIMESTAMP` (event time, never the wall clock, so a replay
   expands identically), `CACHEBUSTING` and `CORRELATOR`;
2. otherwise the request's `params`: a key names a macro when, with underscores removed and
   case ignored, it equals the macro's name, so `PAGEURL`, `pageurl`, `page_url` and `pageUrl`
   all fill `[PAGEURL]`; a key spelled exactly as the macro wins over the others, and among the
   others the first in the mapping's order wins;
3. otherwise the context where it knows the value: `TRANSACTIONID` is the correlator, which is
   shared by every hop of the request's chain as IAB asks;
4. otherwise `-1`, IAB's "unknown".

`ERRORCODE` is filled only from `expand(..., error_code=...)`, i.e. in error pixels, and left as
is elsewhere. Tokens that are not IAB macros are left exactly as they are.

Values are percent-encoded like JavaScript's `encodeURIComponent` (RFC 3986), as the registry
shows; for its array macros a params value is a comma-separated list whose items are encoded one
by one and joined by a bare comma.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import msgspec

from models.context import SessionContext

# IAB's registry (macros-data.json), split by how a value is encoded.
_SCALAR_MACROS = frozenset({
    "TIMESTAMP", "CACHEBUSTING", "CONTENTPLAYHEAD", "MEDIAPLAYHEAD", "BREAKPOSITION", "ADCOUNT",
    "TRANSACTIONID", "PLACEMENTTYPE", "ADTYPE", "BREAKMAXDURATION", "BREAKMAXADS",
    "BREAKMINADLENGTH", "BREAKMAXADLENGTH", "IFA", "IFATYPE", "CLIENTUA", "SERVERUA", "DEVICEUA",
    "SERVERSIDE", "DEVICEIP", "DOMAIN", "PAGEURL", "APPBUNDLE", "OMIDPARTNER", "CLICKTYPE",
    "ADPLAYHEAD", "ASSETURI", "CONTENTID", "CONTENTURI", "PODSEQUENCE", "ADSERVINGID", "ERRORCODE",
    "REASON", "LIMITADTRACKING", "GDPRCONSENT", "STOREID", "STOREURL", "PLAYBACKMETHODS",
    "GPPSTRING", "DSAREQUIRED", "DSAPUBRENDER",
})  # fmt: skip
_ARRAY_MACROS = frozenset({
    "BLOCKEDADCATEGORIES", "ADCATEGORIES", "UNIVERSALADID", "LATLONG", "VASTVERSIONS",
    "APIFRAMEWORKS", "EXTENSIONS", "VERIFICATIONVENDORS", "MEDIAMIME", "PLAYERCAPABILITIES",
    "PLAYERSTATE", "INVENTORYSTATE", "PLAYERSIZE", "CLICKPOS", "REGULATIONS", "CONTENTCAT",
    "GPPSECTIONID", "DSAPARAMS",
})  # fmt: skip

IAB_MACROS: frozenset[str] = _SCALAR_MACROS | _ARRAY_MACROS
"""The names in IAB's VAST macro registry."""

PER_REQUEST_MACROS: frozenset[str] = frozenset(
    {"TIMESTAMP", "CACHEBUSTING", "CORRELATOR", "TRANSACTIONID"}
)
"""Macros whose values are new for every request, so a cache key must leave them out."""

# Characters encodeURIComponent leaves alone besides A-Z a-z 0-9 - _ . ~ (which `quote` always
# keeps). Keeping the comma as well encodes each item of a comma-separated list and joins the
# items with a bare comma, in one call.
_COMPONENT_SAFE = "!'()*"
_ARRAY_SAFE = _COMPONENT_SAFE + ","
_UNRESERVED = string.ascii_letters + string.digits + "-_.~"


def _percent_table(safe: str) -> dict[int, str]:
    """For `str.translate`: every byte value but `safe` and the unreserved characters, to its
    %XX escape."""
    kept = {ord(char) for char in _UNRESERVED + safe}
    return {byte: f"%{byte:02X}" for byte in range(256) if byte not in kept}


_COMPONENT_TABLE = _percent_table(_COMPONENT_SAFE)
_ARRAY_TABLE = _percent_table(_ARRAY_SAFE)
_ENCODING_TABLES: dict[str, dict[int, str]] = {
    **dict.fromkeys(_SCALAR_MACROS, _COMPONENT_TABLE),
    **dict.fromkeys(_ARRAY_MACROS, _ARRAY_TABLE),
    "CORRELATOR": _COMPONENT_TABLE,
}


def _percent_encode(value: str, table: dict[int, str]) -> str:
    """`urllib.parse.quote(value, safe)` for the `safe` of `table`, in C: quote() runs a Python
    call per byte of a value that needs escaping (a timestamp's colons), and every request
    encodes several values. The UTF-8 bytes, read as Latin-1, are one character per byte.

    A lone surrogate (only Python callers can pass one: JSON decoding refuses them) has no
    UTF-8; it is encoded as U+FFFD, as a browser's TextEncoder would."""
    try:
        encoded = value.encode()
    except UnicodeEncodeError:
        encoded = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
    return encoded.decode("latin-1").translate(table)


# Every registry name is upper-case letters only; anything else can never be a macro, so the
# scan does not even stop at it.
_MACRO = re.compile(r"\[([A-Z]+)\]|%%([A-Z]+)%%")

_UNKNOWN = "-1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ExpansionTooLong(ValueError):
    """An expansion would pass the `max_chars` its caller allows."""


def _within(text: str, max_chars: int | None) -> str:
    if max_chars is not None and len(text) > max_chars:
        raise ExpansionTooLong(f"{len(text)} characters > {max_chars}")
    return text


class Macros:
    """The macro values of one ad request, computed on first use and kept for later URLs."""

    __slots__ = ("_context", "_params", "_timestamp_text", "_unix_timestamp", "_values")

    def __init__(
        self,
        context: SessionContext,
        params: Mapping[str, str] | None = None,
        *,
        unix_timestamp: bool = False,
        timestamp: str | None = None,
    ) -> None:
        """`unix_timestamp=True` gives `[TIMESTAMP]` as Unix milliseconds, for upstreams that
        want a number rather than IAB's ISO 8601. `timestamp`: a firer's own reading of the
        time as it writes it (its local zone, say), instead of the context's."""
        self._context = context
        self._timestamp_text = timestamp
        self._params = _by_macro_name(params) if params else {}
        self._unix_timestamp = unix_timestamp
        self._values: dict[str, str] = {}

    def expand(
        self,
        template: str,
        *,
        error_code: int | None = None,
        max_chars: int | None = None,
    ) -> str:
        """`template` with every IAB macro replaced by its encoded value, in one pass.

        Pass `error_code` for error pixels only: without it `[ERRORCODE]` stays as it is.
        `max_chars`: raise `ExpansionTooLong` rather than build a longer result (a document
        holding a macro many times, times a long value from the request, could be huge).
        """
        if "[" not in template and "%%" not in template:
            return _within(template, max_chars)
        split = _split_cached if len(template) <= _COMPILE_CACHE_MAX_CHARS else _split
        head, macros = split(template)
        if not macros:
            return _within(template, max_chars)
        values = self._values  # never holds ERRORCODE, whose value differs from call to call
        parts = [head]
        append = parts.append
        grown = 0
        for name, token, literal in macros:
            value = values.get(name)
            if value is None:
                if name == "ERRORCODE":
                    # An int's digits need no encoding.
                    value = token if error_code is None else str(error_code)
                else:
                    raw = self._raw_value(name)
                    value = values[name] = _percent_encode(raw, _ENCODING_TABLES[name])
            grown += len(value) - len(token)
            append(value)
            append(literal)
        if max_chars is not None and len(template) + grown > max_chars:
            raise ExpansionTooLong(f"{len(template) + grown} characters > {max_chars}")
        return "".join(parts)

    def _raw_value(self, name: str) -> str:
        """The unencoded value of a known macro other than ERRORCODE (lookup order: module
        docstring)."""
        context = self._context
        if name == "TIMESTAMP":
            return self._timestamp() if self._timestamp_text is None else self._timestamp_text
        if name == "CACHEBUSTING":
            return context.cachebusting
        if name == "CORRELATOR":
            return context.correlator
        value = self._params.get(name)
        if value is not None:
            return value
        if name == "TRANSACTIONID":
            return context.correlator
        return _UNKNOWN

    def _timestamp(self) -> str:
        millis = self._context.timestamp
        if self._unix_timestamp:
            return str(millis)
        try:
            moment = _EPOCH + timedelta(milliseconds=millis)
        except OverflowError:
            # Outside the years 1-9999 there is no ISO 8601 date to give.
            return _UNKNOWN
        return moment.isoformat(timespec="milliseconds")


_Compiled = tuple[str, tuple[tuple[str, str, str], ...]]


def _split(template: str) -> _Compiled:
    """`template` split at its IAB macros: the text before the first, then for each macro its
    name, its token as written and the text that follows it. Tokens that are not IAB macros
    stay in the text."""
    names: list[str] = []
    tokens: list[str] = []
    texts: list[str] = []
    position = 0
    for match in _MACRO.finditer(template):
        name = match[1] or match[2]
        if name != "ERRORCODE" and name not in _ENCODING_TABLES:
            continue  # not an IAB macro: left as written, part of the text around it
        texts.append(template[position : match.start()])
        names.append(name)
        tokens.append(match[0])
        position = match.end()
    texts.append(template[position:])
    return texts[0], tuple(zip(names, tokens, texts[1:], strict=True))


# Expanding a split template is a join, with no scan and no callback per macro. An upstream's
# documents and URLs recur from request to request, so `expand` keeps the splits of templates up
# to this size (at most 1024 of them: ~16 MiB) and splits longer ones anew.
_COMPILE_CACHE_MAX_CHARS = 16 * 1024
_split_cached = functools.lru_cache(maxsize=1024)(_split)


def expand(
    url: str,
    context: SessionContext,
    *,
    at: int,
    values: Mapping[str, str] | None = None,
    unix_timestamp: bool = False,
) -> str:
    """`url`, a URL handed on by the resolver, with its macros filled when it is fired.

    `context`: the ad request's (`CACHEBUSTING`, `CORRELATOR`, `TRANSACTIONID`).
    `at`: when the URL is fired, in Unix milliseconds: the `[TIMESTAMP]`.
    `values`: what the firer knows, keyed by macro name as request params are (module
    docstring): `ADPLAYHEAD`, `ASSETURI`, `REASON`, the request's `PAGEURL`... and `ERRORCODE`,
    an IAB error code (digits), for an error pixel. Macros without a value become `-1`, except
    `[ERRORCODE]`, left as it is without one. A `TIMESTAMP` there (the firer's clock as it
    writes it, e.g. in its own zone) is used instead of `at`'s ISO 8601 in UTC.
    """
    params = _by_macro_name(values) if values else {}
    code = params.pop("ERRORCODE", None)
    macros = Macros(
        msgspec.structs.replace(context, timestamp=at),
        params,
        unix_timestamp=unix_timestamp,
        timestamp=params.pop("TIMESTAMP", None),
    )
    return macros.expand(url, error_code=None if code is None else int(code))


def cache_key_template(template: str) -> str:
    """`template` with its per-request macros (`PER_REQUEST_MACROS`) blanked, so that two
    requests for the same upstream content expand it to the same cache key."""
    if "[" not in template and "%%" not in template:
        return template
    return _MACRO.sub(_blank_per_request, template)


def _blank_per_request(match: re.Match[str]) -> str:
    return "" if (match[1] or match[2]) in PER_REQUEST_MACROS else match[0]


def _by_macro_name(params: Mapping[str, str]) -> dict[str, str]:
    """`params` keyed by the macro name each key spells (rule: module docstring)."""
    by_name: dict[str, str] = {}
    for key, value in params.items():
        name = key.replace("_", "").upper()
        if key == name:
            by_name[name] = value
        else:
            by_name.setdefault(name, value)
    return by_name
