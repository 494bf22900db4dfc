"""The `adstream` command line: one click group, one module per sub-command family."""

import click


@click.group()
@click.version_option(package_name="adstream")
def main() -> None:
    """adstream: event-sourced ad decisions on Kafka."""
