"""Python's garbage collector for a long-running worker.

A worker allocates a few hundred container objects per decision (events, structs, asyncio
futures and handles), almost all freed by reference counting within the batch. The cyclic
collector runs its youngest generation every 700 net allocations and, every tenth and
hundredth run, walks the older generations: after start-up those hold everything the worker
keeps for good (modules, Faust's services, campaign rules, caches of parsed VAST), walked
again and again to find nothing. Two knobs, each a setting, measured by `bench.gc_ab`:

- `ADSTREAM_GC_FREEZE` (on): once the worker is ready, move everything alive into the
  permanent generation (`gc.freeze`), which no collection walks;
- `ADSTREAM_GC_GEN0` (50,000): the youngest generation's threshold (Python's own is 700).

`python -m bench.gc_ab --requests 4000 --seconds 5 --rounds 2`, on a busy 2-core machine: the
worker's CPU per decision over a backlog was 0.92x and 0.86x of Python's defaults with the
freeze alone (two rounds), 0.91x and 0.85x with the threshold alone; with both, 1.15x and
0.63x (median 0.89x: the machine's load swung between the rounds).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def set_young_threshold(allocations: int | None) -> None:
    """Collect the youngest generation every `allocations` net allocations (None: Python's
    default), the older ones as Python does."""
    if allocations is None:
        return
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(allocations, older, oldest)


def freeze_start_up() -> None:
    """Everything alive now (start-up's modules, services, tables and caches) is never walked
    again by a collection."""
    gc.collect()
    gc.freeze()
    log.info("garbage collector: %d start-up objects frozen", gc.get_freeze_count())
