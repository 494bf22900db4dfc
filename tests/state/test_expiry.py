"""The expiry index: keys age out by each partition's event-time watermark."""

from __future__ import annotations

import asyncio

from streams.state.expiry import INDEXED_PER_TURN, ExpiryIndex, rebuilt


def test_a_key_is_due_once_its_partitions_watermark_passes_its_expiry() -> None:
    index = ExpiryIndex()
    index.add(0, "early", 100)
    index.add(0, "late", 300)
    index.add(1, "other-partition", 100)

    assert index.due(0) == []  # no watermark yet
    index.observe(0, 200)
    index.observe(0, 150)  # an older event does not move the watermark back
    assert index.watermark(0) == 200
    assert index.due(0) == ["early"]
    assert index.due(1) == []
    assert len(index) == 2


def test_due_pops_at_most_the_limit_oldest_first() -> None:
    index = ExpiryIndex()
    for expires_at in (5, 1, 4, 2, 3):
        index.add(0, f"k{expires_at}", expires_at)
    index.observe(0, 10)
    assert index.due(0, limit=3) == ["k1", "k2", "k3"]
    assert index.due(0) == ["k4", "k5"]


def test_forgotten_partitions_lose_keys_and_watermark() -> None:
    index = ExpiryIndex()
    index.add(0, "a", 1)
    index.add(1, "b", 1)
    index.observe(0, 5)
    index.forget({0})
    assert index.watermark(0) is None
    assert len(index) == 1


def test_sweep_drops_what_aged_out_and_reindexes_what_was_renewed() -> None:
    index = ExpiryIndex()
    for key in ("aged", "renewed", "gone", "aged"):
        index.add(0, key, 100)
    stored = {"aged": 100, "renewed": 500}
    assert index.swept(0) is None
    index.observe(0, 200)
    assert index.sweep(0, stored.get) == ["aged"]
    assert index.swept(0) == 200
    index.observe(0, 499)
    assert index.sweep(0, stored.get) == []  # "renewed" is due at 500, not before
    assert index.swept(0) == 499
    index.observe(0, 500)
    assert index.sweep(0, stored.get) == ["renewed"]
    index.forget({0})
    assert index.swept(0) is None


async def test_a_rebuild_indexes_every_entry_and_lets_the_event_loop_run() -> None:
    count = 3 * INDEXED_PER_TURN + 7
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    index = await rebuilt((i % 4, f"k{i}", i) for i in range(count))
    running.cancel()

    assert len(index) == count
    assert ticks - before >= 3
    index.observe(2, 10)
    assert index.due(2) == ["k2", "k6", "k10"]
