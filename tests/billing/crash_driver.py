"""Test driver: run the real billing consumer and SIGKILL this process inside the Nth batch's
ledger transaction, after its rows are written and before COMMIT.

    python -m tests.billing.crash_driver LEDGER TOPIC KILL_AT_BATCH BATCH_SIZE

LEDGER is what `adstream billing --ledger` takes: an SQLite file or a postgresql:// URL.

Just before dying it prints how many charges the open transaction holds, so the test can
tell that rows really were written and then lost with the crash. Exits 0 if the topic was
caught up before the Nth batch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from streams.billing import consumer
from streams.billing.ledger import Ledger


def main(ledger_path: str, topic: str, kill_at_batch: int, batch_size: int) -> None:
    with Ledger.open(ledger_path) as ledger:
        batches = 0

        def before_commit() -> None:
            nonlocal batches
            batches += 1
            if batches == kill_at_batch:
                seen = ledger.counts().charges  # this batch's rows included
                print(f"dying with {seen} charges", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(
            consumer.run(
                os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                topic,
                ledger,
                asyncio.Event(),
                until_caught_up=True,
                batch_size=batch_size,
                before_commit=before_commit,
            )
        )


if __name__ == "__main__":
    path, name, kill_at, size = sys.argv[1:]
    main(path, name, int(kill_at), int(size))
