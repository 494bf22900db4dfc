"""The `adstream` command line: one click group, one module per sub-command family."""

import click

from streams import logs
from streams.cli.audit import audit
from streams.cli.billing import billing_group
from streams.cli.campaigns import campaigns_group
from streams.cli.demo import demo
from streams.cli.infra import infra_group
from streams.cli.publish import publish
from streams.cli.tail import tail
from streams.cli.vast import vast_group
from streams.cli.worker import worker

__all__ = [
    "audit",
    "billing_group",
    "campaigns_group",
    "demo",
    "infra_group",
    "main",
    "publish",
    "tail",
    "vast_group",
    "worker",
]


@click.group()
@click.version_option(package_name="adstream")
def main() -> None:
    """adstream: event-sourced ad decisions on Kafka."""
    # Warnings of the libraries as JSON lines on stderr, transient Kafka retries left out;
    # the worker and billing configure their own level.
    logs.configure("warning")


main.add_command(demo)
main.add_command(infra_group)
main.add_command(vast_group)
main.add_command(worker)
main.add_command(campaigns_group)
main.add_command(publish)
main.add_command(billing_group)
main.add_command(audit)
main.add_command(tail)
