"""The worker's garbage-collector settings (`streams.worker.collector`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams.settings import Settings
from streams.worker.collector import freeze_start_up, set_young_threshold


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_young_threshold_is_set_and_the_older_ones_kept(collector_restored: None) -> None:
    _, older, oldest = gc.get_threshold()
    set_young_threshold(50_000)
    assert gc.get_threshold() == (50_000, older, oldest)
    set_young_threshold(None)  # Python's own stays
    assert gc.get_threshold() == (50_000, older, oldest)


def test_freezing_moves_what_is_alive_out_of_every_generation(collector_restored: None) -> None:
    kept = [[index] for index in range(1_000)]
    freeze_start_up()
    assert gc.get_freeze_count() >= len(kept)
    assert sum(gc.get_count()) < len(kept)


def test_the_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"ADSTREAM_GC_FREEZE": "true", "ADSTREAM_GC_GEN0": "20000"})
    assert settings.gc_freeze is True
    assert settings.gc_gen0 == 20_000
    with pytest.raises(ValueError, match="ADSTREAM_GC_GEN0"):
        Settings.from_env({"ADSTREAM_GC_GEN0": "0"})
