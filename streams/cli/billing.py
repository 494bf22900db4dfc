"""`adstream billing`: charge every served ad once into a ledger (an SQLite file, or a
PostgreSQL database given by URL), and report on it.

`adstream billing --ledger LEDGER` runs the consumer (settings from the environment: the broker
and ADSTREAM_TOPIC_PREFIX); `adstream billing report --ledger LEDGER` prints the totals.
"""

from __future__ import annotations

import asyncio
import signal

import click
import msgspec

from streams import logs
from streams.billing import consumer, report
from streams.billing.ledger import Ledger, LedgerError
from streams.billing.metrics import BillingMetrics
from streams.cli.environment import CommandFailed, json_text, settings_from_env
from streams.topics import Topics

LEDGER_HELP = "The ledger: an SQLite file, or a postgresql://USER@HOST:PORT/DATABASE URL."


@click.group("billing", invoke_without_command=True)
@click.option("--ledger", "ledger_target", metavar="LEDGER", help=LEDGER_HELP)
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Exit once the end offsets seen at start are billed (else run until SIGTERM/SIGINT).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Most records per ledger transaction.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(0, min_open=True),
    help="Seconds to keep trying to reach Kafka before giving up (default: "
    "ADSTREAM_CONNECT_TIMEOUT_S, 30).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics (billing's lag) at /metrics on this port of ADSTREAM_WEB_BIND.",
)
@click.option("--json", "as_json", is_flag=True, help="The final state (or the error) as JSON.")
@click.pass_context
def billing_group(
    ctx: click.Context,
    ledger_target: str | None,
    until_caught_up: bool,
    batch_size: int,
    connect_timeout: float | None,
    metrics_port: int | None,
    as_json: bool,
) -> None:
    """Charge every served ad exactly once into the ledger at --ledger.

    Reads ad-served (read_committed) from the offsets stored in the ledger; each batch of
    charges commits in one database transaction with its offsets. SIGTERM/SIGINT stop after the
    batch in progress. Progress goes to stderr.
    """
    if ctx.invoked_subcommand is not None:
        return
    if ledger_target is None:
        raise click.UsageError("--ledger LEDGER is required", ctx)
    settings = settings_from_env(as_json=as_json)
    logs.configure(settings.log_level)
    topic = Topics.named(settings.topic_prefix).served
    metrics = None
    if metrics_port is not None:
        metrics = BillingMetrics()
        try:
            metrics.serve(metrics_port, settings.web_bind)
        except OSError as exc:
            raise click.ClickException(f"--metrics-port {metrics_port}: {exc}") from exc
    try:
        with Ledger.open(ledger_target) as ledger:
            progress = asyncio.run(
                _bill(
                    settings.kafka_bootstrap_servers,
                    topic,
                    ledger,
                    until_caught_up,
                    batch_size,
                    settings.connect_timeout_s if connect_timeout is None else connect_timeout,
                    metrics,
                )
            )
    except (LedgerError, consumer.BillingError) as exc:
        raise CommandFailed(str(exc), as_json=as_json) from exc
    if as_json:
        click.echo(json_text({"ok": True, **msgspec.structs.asdict(progress)}))
        return
    state = "caught up" if progress.caught_up else "stopped"
    click.echo(f"billing {state}: {_progress_line(progress)}", err=True)


async def _bill(
    bootstrap: str,
    topic: str,
    ledger: Ledger,
    until_caught_up: bool,
    batch_size: int,
    connect_timeout_s: float,
    metrics: BillingMetrics | None,
) -> consumer.Progress:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await consumer.run(
        bootstrap,
        topic,
        ledger,
        stop,
        until_caught_up=until_caught_up,
        batch_size=batch_size,
        connect_timeout_s=connect_timeout_s,
        on_progress=lambda progress: _report(progress, metrics),
    )


def _report(progress: consumer.Progress, metrics: BillingMetrics | None) -> None:
    click.echo(_progress_line(progress), err=True)
    if metrics is not None:
        metrics.show(progress)


def _progress_line(progress: consumer.Progress) -> str:
    lag = "?" if progress.lag is None else f"{progress.lag:,}"
    return (
        f"{progress.charges:,} charges in the ledger ({progress.charged:,} by this run), "
        f"{progress.duplicates:,} duplicates, {progress.rejected:,} rejected, lag {lag}"
    )


@billing_group.command("report")
@click.option("--ledger", "ledger_target", metavar="LEDGER", required=True, help=LEDGER_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def report_command(ledger_target: str, as_json: bool) -> None:
    """Totals per campaign and UTC day of event time, and per currency, exact to the micro."""
    try:
        with Ledger.open(ledger_target, read_only=True) as ledger:
            built = report.build(ledger.totals(), ledger.counts())
    except LedgerError as exc:
        raise CommandFailed(str(exc), as_json=as_json) from exc
    click.echo(report.render_json(built) if as_json else report.render_text(built))
