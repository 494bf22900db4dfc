"""Benchmark driver: the real worker, restoring its tables through Faust's per-record recovery
loop, as it did before restores streamed (`streams.worker.recovery`, item 12), for
`bench.restore` to compare with.

    python -m bench._per_record_restore_worker      (settings from the environment)
"""

from __future__ import annotations

from collections import Counter

from faust.types import TP
from typing_extensions import override

from streams.settings import Settings
from streams.worker.recovery import Recovery, TableManager
from streams.worker.runner import run


class PerRecordRecovery(Recovery):
    @override
    async def _stream(self, tps: set[TP], offsets: Counter[TP], read: dict[TP, int]) -> None:
        """Leave every record to Faust's loop."""


class PerRecordTableManager(TableManager):
    recovery_class = PerRecordRecovery


if __name__ == "__main__":
    run(Settings.from_env(), table_manager=PerRecordTableManager)
