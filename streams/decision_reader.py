"""Reading a deployment's decisions back the way billing and audit do: one read_committed
consumer on `ad-served`, `ad-denied` and `ad-requests-dlq`, from the beginning.

A second decision for a request_id is kept apart as a duplicate (exactly-once says there is
none), so whoever reads can check invariant 1 rather than assume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from aiokafka import AIOKafkaConsumer

from streams.topics import Topics

Output = Literal["served", "denied", "dlq"]


@dataclass
class Decision:
    topic: Output
    payload: dict[str, Any]
    """The event as JSON: `AdServed`, `AdDenied` or `DeadLetter`."""
    offset: int
    partition: int = -1
    received_at: float = 0.0
    """When the reader got it (`time.monotonic()`), for recovery and latency measurements."""

    @property
    def reason(self) -> str | None:
        """A denial's reason (None for the other outputs)."""
        return self.payload.get("reason")


@dataclass
class DecisionReader:
    bootstrap: str
    topics: Topics
    decisions: dict[str, Decision] = field(default_factory=dict)
    """The first decision of each request_id."""
    duplicates: list[Decision] = field(default_factory=list)
    dead_letters: list[Decision] = field(default_factory=list)
    keep_fields: tuple[str, ...] | None = None
    """Keep only these fields of each decision (big runs: a served event carries its VAST)."""
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        names: dict[str, Output] = {
            self.topics.served: "served",
            self.topics.denied: "denied",
            self.topics.dlq: "dlq",
        }
        self._consumer = AIOKafkaConsumer(
            *names,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read(self._consumer, names))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `done()` holds after some read, or the timeout; return `done()`."""
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.check_alive()
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return True

    async def caught_up(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything committed to the outputs by now has been read."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        # read_committed: the end offsets are the last stable offsets, the first offsets
        # not readable yet.
        ends = await consumer.end_offsets(list(consumer.assignment()))
        deadline = time.monotonic() + timeout_s
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            if time.monotonic() > deadline:
                return False
            self.check_alive()
            await asyncio.sleep(0.05)
        return True

    def check_alive(self) -> None:
        """Raise what stopped the reading task, if it stopped."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def _read(self, consumer: AIOKafkaConsumer, names: dict[str, Output]) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for tp, records in batches.items():
                for record in records:
                    payload = msgspec.json.decode(record.value)
                    if self.keep_fields is not None:
                        payload = {k: payload.get(k) for k in self.keep_fields}
                    decision = Decision(
                        names[tp.topic],
                        payload,
                        record.offset,
                        tp.partition,
                        now,
                    )
                    if decision.topic == "dlq":
                        self.dead_letters.append(decision)
                        continue
                    request_id = decision.payload["request_id"]
                    if request_id in self.decisions:
                        self.duplicates.append(decision)
                    else:
                        self.decisions[request_id] = decision
            self._arrived.set()
