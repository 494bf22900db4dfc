"""What a table's RocksDB files hold, read as a restarted worker would find them."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from rocksdict import AccessType, Options, Rdict

from streams.worker.committed_store import Store


def on_disk(tabledir: Path, table: str, partition: int) -> tuple[int | None, dict[bytes, bytes]]:
    """(the changelog offset it holds, its records) of one partition of a table; (None, {})
    when the partition has no database."""
    path = tabledir / f"{table}-{partition}.db"
    if not path.exists():
        return None, {}
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        records = {cast(bytes, key): value for key, value in db.items()}
    finally:
        db.close()
    offset = records.pop(Store.offset_key, None)
    return (None if offset is None else int(offset)), records
