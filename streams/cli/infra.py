"""`adstream infra up|down|status|env`: the local Kafka broker and Redis server."""

from __future__ import annotations

import asyncio
import os

import click
import msgspec

from infra import stack
from infra.errors import InfraError
from infra.health import ServiceHealth, check_kafka, check_redis
from streams.cli.environment import CommandFailed, json_text


async def check_all(addresses: dict[str, str]) -> list[ServiceHealth]:
    return list(
        await asyncio.gather(
            check_kafka(addresses["KAFKA_BOOTSTRAP_SERVERS"]), check_redis(addresses["REDIS_URL"])
        )
    )


def echo_health(results: list[ServiceHealth]) -> bool:
    """Print one line per service (to stderr, so stdout stays eval-able); True if all are up."""
    for result in results:
        verdict = "healthy" if result.healthy else "UNHEALTHY"
        click.echo(
            f"{result.service:<6} {result.address:<28} {verdict:<9} "
            f"{result.round_trip_ms:7.1f} ms  {result.detail}",
            err=True,
        )
    return all(result.healthy for result in results)


@click.group("infra")
def infra_group() -> None:
    """Run a real Kafka broker (KRaft) and Redis server on 127.0.0.1."""


@infra_group.command("up")
def up() -> None:
    """Start both in the background; print `export` lines for `eval "$(adstream infra up)"`."""
    click.echo(
        "starting Kafka and Redis on 127.0.0.1 (the first run downloads Kafka's jars)...", err=True
    )
    try:
        started = stack.up()
    except InfraError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"logs: {started.log_dir}; stop with `adstream infra down`", err=True)
    _echo_exports(started.addresses())


def _echo_exports(addresses: dict[str, str]) -> None:
    for name, value in addresses.items():
        click.echo(f"export {name}={value}")


def _running_addresses(as_json: bool = False) -> tuple[dict[str, object], dict[str, str]]:
    """The state of the stack `infra up` started, and its addresses."""
    running = stack.status()
    if running is None:
        raise CommandFailed("not running; start it with `adstream infra up`", as_json=as_json)
    addresses = running["addresses"]
    assert isinstance(addresses, dict)
    return running, addresses


@infra_group.command("down")
def down() -> None:
    """Stop what `infra up` started (SIGTERM, then SIGKILL after a grace period)."""
    stopped = stack.down()
    if stopped is None:
        click.echo("nothing was running", err=True)
    else:
        click.echo(f"stopped; logs kept in {stopped.get('logs')}", err=True)


@infra_group.command("env")
def env() -> None:
    """Print the `export` lines of the running stack again: `eval "$(adstream infra env)"`
    in a new shell."""
    _, addresses = _running_addresses()
    _echo_exports(addresses)


@infra_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="The health (or the error) as JSON.")
def status(as_json: bool) -> None:
    """Check that the running stack answers, and that this shell's commands would use it;
    exit 1 if it is down or unhealthy."""
    running, addresses = _running_addresses(as_json)
    results = asyncio.run(check_all(addresses))
    healthy = all(result.healthy for result in results)
    # Commands read the environment, not the stack's record: say where they part.
    elsewhere = {
        name: os.environ.get(name) for name, value in addresses.items()
        if os.environ.get(name) != value
    }  # fmt: skip
    if as_json:
        services = [msgspec.structs.asdict(result) for result in results]
        report = {"ok": healthy, "addresses": addresses, "logs": running.get("logs")}
        click.echo(json_text({**report, "services": services, "shell_elsewhere": elsewhere}))
        if not healthy:
            raise SystemExit(1)
        return
    for name, value in elsewhere.items():
        click.echo(
            f"this shell has {name}={value or '(unset)'}, not the stack's "
            f'{addresses[name]}: eval "$(adstream infra env)"',
            err=True,
        )
    if not echo_health(results):
        raise click.ClickException(f"unhealthy; logs are in {running.get('logs')}")
