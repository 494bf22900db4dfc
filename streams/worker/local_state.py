"""The worker's RocksDB tables on disk, trusted only after a clean shutdown.

Faust writes table changes to RocksDB as it makes them, before their Kafka transaction
commits. After a crash the disk may therefore hold changes whose transaction was aborted
(the events behind them are processed again), and Faust's recovery would keep them. So, as
Kafka Streams does under exactly-once, the state on disk is reused only when the previous
worker shut down cleanly (it leaves a marker); otherwise it is discarded and rebuilt from the
changelogs, which hold committed changes only.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "CLEAN_SHUTDOWN"


class LocalState:
    def __init__(self, table_dir: Path) -> None:
        self.table_dir = table_dir
        self.marker = table_dir.parent / MARKER

    def open(self) -> bool:
        """Keep the state if the last shutdown was clean (True), else discard it (False)."""
        if self.marker.exists():
            self.marker.unlink()
            return True
        if self.table_dir.exists():
            log.warning(
                "the last shutdown was not clean: discarding %s, restoring from changelogs",
                self.table_dir,
            )
            shutil.rmtree(self.table_dir)
        return False

    def closed_cleanly(self) -> None:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.touch()
