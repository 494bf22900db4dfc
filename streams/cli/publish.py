"""`adstream publish FILE|-` and `adstream publish --synthetic N`: send ad requests the way an
edge server does (`streams.edge.EdgePublisher`).

A file holds one `AdRequest` JSON object per line. Each line is checked by the worker's own
rules (`models.codec.decode_request`) before it is sent: a bad line is reported with its number
and not sent, the others go on, and the exit status is 1. Synthetic load makes fresh requests
with the current time as event time, for users `user-1`..`user-U` and the given campaigns.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import IO

import click
import msgspec

from models.codec import InvalidEvent, decode_request
from models.context import SessionContext
from models.events import SCHEMA_VERSION, AdRequest
from streams.cli.environment import CommandFailed, json_text, reach_broker, settings_from_env
from streams.edge import EdgePublisher, PublishError
from streams.topics import Topics

PLACEMENT = "synthetic"


class Tally(msgspec.Struct):
    sent: int = 0
    rejected: int = 0
    failed: int = 0
    first_failure: str = ""


class Progress:
    """A status line on stderr, rewritten in place on a terminal, at most once a second."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.started = time.monotonic()
        self._shown = self.started
        self._in_place = sys.stderr.isatty()

    def show(self, sent: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._shown < 1.0:
            return
        self._shown = now
        of = f"/{self.total:,}" if self.total is not None else ""
        line = f"published {sent:,}{of} ({sent / max(now - self.started, 1e-9):,.0f}/s)"
        end = "\n" if final or not self._in_place else ""
        click.echo(("\r" if self._in_place else "") + line, err=True, nl=False)
        click.echo(end, err=True, nl=False)


def file_requests(lines: IO[bytes], tally: Tally) -> Iterator[AdRequest]:
    """The valid requests of a JSON-lines stream; each bad line reported on stderr.

    Lines are read as bytes, so a line that is not UTF-8 is one bad line like any other
    rather than the end of the file.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield decode_request(line)
        except InvalidEvent as exc:
            tally.rejected += 1
            click.echo(f"line {number}: not sent: {exc}", err=True)


def synthetic_requests(
    count: int, users: int, campaigns: tuple[str, ...], seed: int
) -> Iterator[AdRequest]:
    rng = random.Random(seed)
    for _ in range(count):
        cookies = {"user_id": f"user-{rng.randint(1, users)}"}
        yield AdRequest(
            schema=SCHEMA_VERSION,
            context=SessionContext.create(cookies),
            campaign_id=rng.choice(campaigns),
            placement_id=PLACEMENT,
            params={},
        )


async def paced(requests: Iterator[AdRequest], rate: float) -> AsyncIterator[AdRequest]:
    """`requests` at `rate` per second (0: as fast as the broker takes them)."""
    started = time.monotonic()
    for index, request in enumerate(requests):
        if rate > 0:
            ahead = started + index / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        yield request


async def send_all(
    publisher: EdgePublisher,
    requests: Iterator[AdRequest],
    rate: float,
    tally: Tally,
    progress: Progress,
) -> None:
    """Send every request, pipelined, and count the acknowledged ones."""
    pending: set[asyncio.Future[object]] = set()

    def acknowledged(future: asyncio.Future[object]) -> None:
        pending.discard(future)
        failure = None if future.cancelled() else future.exception()
        if failure is None:
            tally.sent += 1
            progress.show(tally.sent)
        else:
            tally.failed += 1
            tally.first_failure = tally.first_failure or repr(failure)

    async for request in paced(requests, rate):
        future = await publisher.send(request)
        pending.add(future)
        future.add_done_callback(acknowledged)
    await publisher.flush()
    if pending:
        await asyncio.wait(pending)
    if tally.failed:
        raise PublishError(f"{tally.failed} requests were not acknowledged: {tally.first_failure}")


@click.command("publish")
@click.argument("source", type=click.File("rb"), required=False)
@click.option("--synthetic", type=click.IntRange(min=1), help="Generate this many requests.")
@click.option("--users", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--campaign",
    "campaigns",
    multiple=True,
    help="Campaign id for synthetic requests (repeat for several).",
)
@click.option(
    "--rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Requests per second; 0 sends as fast as the broker takes them.",
)
@click.option("--seed", default=1, show_default=True, help="Of the synthetic users and campaigns.")
@click.option("--json", "as_json", is_flag=True, help="Report (or the error) as JSON on stdout.")
def publish(
    source: IO[bytes] | None,
    synthetic: int | None,
    users: int,
    campaigns: tuple[str, ...],
    rate: float,
    seed: int,
    as_json: bool,
) -> None:
    """Publish ad requests from SOURCE (JSON lines; - for stdin) or synthetic ones.

    Exits 1 if a line was rejected (each is reported on stderr) or the broker failed."""
    if (source is None) == (synthetic is None):
        raise click.UsageError("give either SOURCE (a file, or - for stdin) or --synthetic N")
    tally = Tally()
    if synthetic is not None:
        if not campaigns:
            raise click.UsageError("--synthetic needs at least one --campaign")
        requests = synthetic_requests(synthetic, users, campaigns, seed)
    else:
        assert source is not None
        requests = file_requests(source, tally)
    settings = settings_from_env(as_json=as_json)
    reach_broker(settings, as_json=as_json)
    progress = Progress(synthetic)

    async def run() -> None:
        async with EdgePublisher.from_settings(settings, wait_for_decisions=False) as publisher:
            await send_all(publisher, requests, rate, tally, progress)

    try:
        asyncio.run(run())
    except PublishError as exc:
        raise CommandFailed(f"{exc} ({tally.sent} sent before)", as_json=as_json) from exc
    progress.show(tally.sent, final=True)
    topic = Topics.named(settings.topic_prefix).requests
    if as_json:
        report = {"ok": not tally.rejected, "topic": topic, "published": tally.sent}
        click.echo(json_text({**report, "rejected": tally.rejected}))
    else:
        click.echo(
            f"{tally.sent} requests published to {topic}; {tally.rejected} lines rejected",
            err=True,
        )
    if tally.rejected:
        sys.exit(1)
