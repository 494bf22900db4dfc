"""Which event a table access belongs to.

6. **Table writes follow `current_event()`.** In faust-streaming 0.15.3 a table write goes to
   the changelog partition (and RocksDB partition) of the event being processed; in a
   `take_events` batch that is whichever event came last. `event_context` names the right
   event for each store access, and `streams.worker.tables.TypedTable` writes name their
   event explicitly.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

from faust.streams import _current_event
from faust.types import EventT


@contextlib.contextmanager
def event_context(event: EventT[Any]) -> Iterator[None]:
    """Table reads and writes inside this block belong to `event`'s partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
