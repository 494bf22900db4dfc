"""`adstream worker`: the production entry point (settings from the environment)."""

from __future__ import annotations

import click
import msgspec

from streams.settings import Settings
from streams.worker import runner as worker_runner


@click.command("worker")
@click.option("--log-level", help="Overrides ADSTREAM_LOG_LEVEL (debug, info, warning).")
@click.option("--partitions", type=int, help="Overrides ADSTREAM_PARTITIONS for new topics.")
@click.option("--data-dir", help="Overrides ADSTREAM_DATA_DIR (RocksDB state).")
def worker(log_level: str | None, partitions: int | None, data_dir: str | None) -> None:
    """Run one decision worker until SIGTERM/SIGINT (graceful: in-flight batches finish).

    Reads KAFKA_BOOTSTRAP_SERVERS, REDIS_URL and the ADSTREAM_* variables listed in README.md.
    """
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    overrides = {"log_level": log_level, "partitions": partitions, "data_dir": data_dir}
    given = {name: value for name, value in overrides.items() if value is not None}
    worker_runner.run(msgspec.structs.replace(settings, **given))
