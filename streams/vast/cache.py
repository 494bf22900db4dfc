"""An optional Redis lookaside cache for upstream VAST responses.

Redis is an accelerator, never a dependency: any Redis failure is a cache miss (or a skipped
write), and after one the cache stays out of the way for `retry_after` seconds, so a Redis
outage costs one timeout, not one per request. It refills by itself once Redis is back.

Keys are built from the URL *template* with the per-request macros blanked
(`streams.macros.cache_key_template`), so the same upstream content requested for two users,
with two cachebusters, is one entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Mapping
from urllib.parse import urlencode

import redis.asyncio as redis

from streams.macros import PER_REQUEST_MACROS, cache_key_template

log = logging.getLogger(__name__)

_MAX_AGE = re.compile(r"(s-maxage|max-age)\s*=\s*\"?(\d+)", re.IGNORECASE)
_UNCACHEABLE = re.compile(r"\b(no-store|no-cache|private)\b", re.IGNORECASE)


class ResponseCache:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "adstream:vast:",
        timeout: float = 0.05,
        retry_after: float = 1.0,
    ) -> None:
        """`timeout` bounds every Redis call; a failure keeps Redis out of the path for
        `retry_after` seconds."""
        self._redis = client
        self._prefix = prefix
        self._timeout = timeout
        self._retry_after = retry_after
        self._down_until = 0.0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "adstream:vast:",
        timeout: float = 0.05,
        retry_after: float = 1.0,
    ) -> ResponseCache:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return cls(client, prefix=prefix, timeout=timeout, retry_after=retry_after)

    def key(self, template: str, params: Mapping[str, str] | None = None) -> str:
        """The cache key of the response to `template` (a URL before macro expansion) with
        `params` added to its query; per-request values are left out of both."""
        source = cache_key_template(template)
        if params:
            kept = sorted(
                (k, v) for k, v in params.items() if _macro_name(k) not in PER_REQUEST_MACROS
            )
            source = f"{source}\n{urlencode(kept)}"
        return self._prefix + hashlib.sha256(source.encode()).hexdigest()

    async def get(self, key: str) -> bytes | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._redis.get(key)
        except (redis.RedisError, OSError) as exc:  # TimeoutError is an OSError
            self._mark_down(exc)
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if time.monotonic() < self._down_until:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(key, value, px=max(1, int(ttl * 1000)))
        except (redis.RedisError, OSError) as exc:
            self._mark_down(exc)

    def _mark_down(self, exc: BaseException) -> None:
        log.warning("VAST cache unavailable for %.1fs: %r", self._retry_after, exc)
        self._down_until = time.monotonic() + self._retry_after

    async def aclose(self) -> None:
        await self._redis.aclose()


def cache_ttl(cache_control: str | None, default: float) -> float | None:
    """How long a response may be cached: `default`, shortened by the response's own
    `s-maxage`/`max-age`; None when it says not to be stored or shared."""
    if not cache_control:
        return default
    if _UNCACHEABLE.search(cache_control):
        return None
    ages = dict((name.lower(), int(age)) for name, age in _MAX_AGE.findall(cache_control))
    # We are a shared cache: s-maxage, meant for those, wins over max-age.
    age = ages.get("s-maxage", ages.get("max-age"))
    if age is None:
        return default
    return min(default, float(age)) or None


def _macro_name(key: str) -> str:
    # The macro a params key fills, spelled as streams.macros reads it (page_url: PAGEURL).
    return key.replace("_", "").upper()
