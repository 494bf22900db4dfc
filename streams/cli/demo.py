"""`adstream demo`: the main job, run from a fresh machine with one command.

Until the decision pipeline exists, the demo brings up the infrastructure (unless
KAFKA_BOOTSTRAP_SERVERS and REDIS_URL point at running services), proves it healthy
end to end, and shuts down what it started.
"""

from __future__ import annotations

import asyncio
import os

import click

from infra.errors import InfraError
from infra.stack import LocalStack
from streams.cli.infra import check_all, echo_health
from streams.settings import Settings


@click.command("demo")
def demo() -> None:
    """Start the local infrastructure (if no addresses are given) and check it end to end."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL"):
        settings = Settings.from_env()
        addresses = {
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "REDIS_URL": settings.redis_url,
        }
        healthy = echo_health(asyncio.run(check_all(addresses)))
    else:
        click.echo("starting a local Kafka broker and Redis server on 127.0.0.1...", err=True)
        try:
            with LocalStack.create() as local:
                click.echo(f"logs: {local.log_dir}", err=True)
                healthy = echo_health(asyncio.run(check_all(local.addresses())))
        except InfraError as exc:
            raise click.ClickException(str(exc)) from exc
    if not healthy:
        raise click.ClickException("the infrastructure is not healthy")
    click.echo("infrastructure healthy: Kafka and Redis answered end to end", err=True)
