"""`adstream worker`: the production entry point (settings from the environment)."""

from __future__ import annotations

from typing import get_args

import click
import msgspec

from streams.cli.environment import reach_broker, settings_from_env
from streams.settings import LogLevel
from streams.worker import runner as worker_runner


@click.command("worker")
@click.option(
    "--log-level",
    type=click.Choice(get_args(LogLevel), case_sensitive=False),
    help="Overrides ADSTREAM_LOG_LEVEL.",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    help="Overrides ADSTREAM_PARTITIONS for new topics.",
)
@click.option("--data-dir", help="Overrides ADSTREAM_DATA_DIR (RocksDB state).")
def worker(log_level: str | None, partitions: int | None, data_dir: str | None) -> None:
    """Run one decision worker until SIGTERM/SIGINT (graceful: in-flight batches finish).

    Reads KAFKA_BOOTSTRAP_SERVERS, REDIS_URL and the ADSTREAM_* variables listed in README.md.
    Exits 1 with one line if a setting is bad or no broker answers within
    ADSTREAM_CONNECT_TIMEOUT_S.
    """
    settings = settings_from_env()
    overrides = {
        "log_level": log_level and log_level.lower(),
        "partitions": partitions,
        "data_dir": data_dir,
    }
    given = {name: value for name, value in overrides.items() if value is not None}
    settings = msgspec.structs.replace(settings, **given)
    reach_broker(settings)
    worker_runner.run(settings)
