"""`adstream demo`: the main job, run from a fresh machine with one command.

It checks the infrastructure end to end first (KAFKA_BOOTSTRAP_SERVERS and REDIS_URL when both
are set, else a local Kafka broker and Redis server it starts and stops), then runs the demo
(`streams.demo.run`) and exits 0 only if every invariant held.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import click
import httpx

from infra.errors import InfraError
from infra.stack import LocalStack
from streams.cli.environment import reach_broker, settings_from_env
from streams.cli.infra import check_all, echo_health
from streams.demo.run import DemoFailed, DemoOptions, run_demo
from streams.demo.summary import Summary
from streams.plot import available as plot_available
from streams.worker.process import WorkerFailed

DEFAULTS = DemoOptions()


@click.command("demo")
@click.option(
    "--requests",
    default=DEFAULTS.requests,
    show_default=True,
    type=click.IntRange(min=50),
    help="Messages to publish, duplicates and malformed ones included.",
)
@click.option("--users", default=DEFAULTS.users, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--hours",
    default=DEFAULTS.hours,
    show_default=True,
    type=click.FloatRange(min=0.1, max=24 * 30),
    help="Event time the stream spans, ending now.",
)
@click.option("--seed", default=DEFAULTS.seed, show_default=True, help="Of the stream.")
@click.option(
    "--rate",
    default=DEFAULTS.rate,
    show_default=True,
    type=click.IntRange(min=1),
    help="Messages published per second.",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Afterwards keep the worker, the upstream, Kafka and Redis up until Ctrl-C.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw the summary into this PNG: decisions per minute by outcome, spend "
    "against budget over event time, cap peaks (needs the `plot` extra).",
)
def demo(
    requests: int,
    users: int,
    hours: float,
    seed: int,
    rate: int,
    keep_running: bool,
    plot: Path | None,
) -> None:
    """Run the decision pipeline on a realistic stream and summarize what it decided.

    Starts a local VAST upstream and one worker, loads the sample campaigns, publishes the
    stream with event times in the last HOURS, reads every decision back (read_committed)
    and prints served and denied by reason, spend against budgets and caps against their
    peaks. Exits 1 if a request went undecided or a cap or budget was exceeded.
    """
    if plot is not None and not plot_available():
        raise click.UsageError("--plot needs matplotlib: pip install 'adstream[plot]'")
    options = DemoOptions(requests, users, hours, seed, rate, keep_running, plot)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL"):
        settings = settings_from_env()
        reach_broker(settings)
        summary = _checked_run(
            {
                "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                "REDIS_URL": settings.redis_url,
            },
            options,
        )
    else:
        click.echo("starting a local Kafka broker and Redis server on 127.0.0.1...", err=True)
        try:
            with LocalStack.create() as local:
                click.echo(f"logs: {local.log_dir}", err=True)
                summary = _checked_run(local.addresses(), options)
        except InfraError as exc:
            raise click.ClickException(str(exc)) from exc
    if not summary.ok:
        raise click.ClickException(f"{len(summary.violations)} invariants broken (listed above)")


def _checked_run(addresses: dict[str, str], options: DemoOptions) -> Summary:
    """The health check first, then the demo; failures become one clear message."""
    if not echo_health(asyncio.run(check_all(addresses))):
        raise click.ClickException("the infrastructure is not healthy")
    work_dir = Path(tempfile.mkdtemp(prefix="adstream-demo-"))
    try:
        return asyncio.run(
            run_demo(
                addresses["KAFKA_BOOTSTRAP_SERVERS"], addresses["REDIS_URL"], options, work_dir
            )
        )
    except (DemoFailed, WorkerFailed, httpx.HTTPError) as exc:
        raise click.ClickException(f"the demo did not finish: {exc}") from exc
    except asyncio.CancelledError as exc:  # SIGTERM (see run_demo)
        raise click.ClickException("stopped by SIGTERM") from exc
