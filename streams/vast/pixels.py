"""`<Error>` pixels, fired in the background so that reporting a failure never delays a decision.

Concurrency is bounded (a burst of failures must not open a connection per pixel) and so is
the backlog: past `max_pending`, pixels are dropped and counted rather than queued without
end. Every task is tracked, so `aclose` leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from streams.vast.errors import VastError
from streams.vast.transport import VastTransport

log = logging.getLogger(__name__)

_PIXEL_BODY_BYTES = 64 * 1024


class ErrorPixels:
    def __init__(
        self,
        transport: VastTransport,
        *,
        max_concurrency: int = 8,
        max_pending: int = 1000,
        timeout: float = 2.0,
    ) -> None:
        self._transport = transport
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_pending = max_pending
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0
        """Pixels not fired because the backlog was full."""

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def fire(self, urls: Iterable[str]) -> None:
        """Schedule a GET of each URL and return at once."""
        for url in urls:
            if len(self._tasks) >= self._max_pending:
                self.dropped += 1
                continue
            task = asyncio.create_task(self._fire(url))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fire(self, url: str) -> None:
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._transport.get(url, max_body_bytes=_PIXEL_BODY_BYTES)
            except (VastError, TimeoutError) as exc:
                log.debug("error pixel %s failed: %s", url, exc)

    async def drain(self) -> None:
        """Wait until every pixel fired so far has completed."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self, grace: float = 1.0) -> None:
        """Give pending pixels `grace` seconds, then cancel what is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
