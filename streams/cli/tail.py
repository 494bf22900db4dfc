"""`adstream tail`: watch decisions as they are committed (read_committed), filtered."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable

import click
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.cli.environment import CommandFailed, reach_broker, settings_from_env
from streams.committed_reader import MissingTopic, topic_partitions
from streams.tail import (
    OUTCOMES,
    Line,
    Source,
    TailFilter,
    as_json,
    as_row,
    line_of,
    parse_since,
    table_header,
)
from streams.topics import Topics


class _Since(click.ParamType):
    name = "TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_since(str(value), time.time_ns() // 1_000_000)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("tail")
@click.option("--campaign", "campaigns", multiple=True, help="Only this campaign (repeatable).")
@click.option("--user", "users", multiple=True, help="Only this user id (repeatable).")
@click.option("--request-id", "request_ids", multiple=True, help="Only this request (repeatable).")
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    type=click.Choice(OUTCOMES),
    help="Only this outcome: served, a denial reason, or dead_letter (repeatable).",
)
@click.option("--dlq", is_flag=True, help="Also the dead letters (ad-requests-dlq).")
@click.option(
    "--from",
    "since_ms",
    type=_Since(),
    help="Start at this event time: ISO 8601 (UTC unless it says), Unix ms, or a time ago "
    "(90s, 10m, 2h, 1d). Default: new decisions only; with --no-follow, the beginning.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["json", "table"]),
    help="JSON lines or a table; default: a table on a terminal, JSON lines otherwise.",
)
@click.option("--no-follow", is_flag=True, help="Stop at the end instead of waiting for more.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many lines.")
def tail(
    campaigns: tuple[str, ...],
    users: tuple[str, ...],
    request_ids: tuple[str, ...],
    outcomes: tuple[str, ...],
    dlq: bool,
    since_ms: int | None,
    output: str | None,
    no_follow: bool,
    limit: int | None,
) -> None:
    """Print the decisions of ad-served and ad-denied (read_committed: only committed ones)
    as they come, until Ctrl-C. Settings from the environment (KAFKA_BOOTSTRAP_SERVERS,
    ADSTREAM_TOPIC_PREFIX). Each partition's records come in offset order."""
    settings = settings_from_env()
    topics = Topics.named(settings.topic_prefix)
    names: dict[str, Source] = {topics.served: "served", topics.denied: "denied"}
    if dlq:
        names[topics.dlq] = "dlq"
    if since_ms is None and no_follow:
        since_ms = 0
    wanted = TailFilter(
        frozenset(campaigns),
        frozenset(users),
        frozenset(request_ids),
        frozenset(outcomes),
        since_ms,
    )
    table = (output or ("table" if sys.stdout.isatty() else "json")) == "table"
    reach_broker(settings)
    printer = _Printer(table, limit)
    try:
        asyncio.run(
            _tail(settings.kafka_bootstrap_servers, names, since_ms, not no_follow, wanted, printer)
        )
    except MissingTopic as exc:
        raise CommandFailed(str(exc)) from None


class _Printer:
    """Writes lines to stdout; says when to stop (the limit reached, or stdout closed as by
    `| head`)."""

    def __init__(self, table: bool, limit: int | None) -> None:
        self.format: Callable[[Line], str] = as_row if table else as_json
        self.header = table
        self.left = limit

    def __call__(self, line: Line) -> bool:
        try:
            if self.header:
                click.echo(table_header())
                self.header = False
            click.echo(self.format(line))
            sys.stdout.flush()  # a pipe (`| jq`) gets each line as it comes, not a buffer's worth
        except BrokenPipeError:
            # Whoever read stdout has gone: nothing more to say, not even at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return False
        if self.left is not None:
            self.left -= 1
            return self.left > 0
        return True


async def _tail(
    bootstrap: str,
    names: dict[str, Source],
    since_ms: int | None,
    follow: bool,
    wanted: TailFilter,
    emit: Callable[[Line], bool],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    partitions = await topic_partitions(bootstrap, names)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        # Let the consumer's own reset of the new assignment finish first: it would
        # otherwise race the seeks below.
        for tp in partitions:
            await consumer.position(tp)
        # Read before seeking: the end of what --no-follow shows.
        ends = await consumer.end_offsets(partitions)
        await _seek(consumer, partitions, ends, since_ms)
        if follow:
            click.echo(f"following {', '.join(names)}; Ctrl-C stops", err=True)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    if not follow and record.offset >= ends[tp]:
                        break
                    try:
                        event = msgspec.json.decode(record.value or b"")
                    except msgspec.DecodeError:
                        click.echo(
                            f"{tp.topic}[{tp.partition}]@{record.offset}: not JSON", err=True
                        )
                        continue
                    line = line_of(
                        names[tp.topic], tp.partition, record.offset, record.timestamp, event
                    )
                    if wanted.keeps(line) and not emit(line):
                        return
            if not follow and all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
                return
    finally:
        await consumer.stop()


async def _seek(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    ends: dict[TopicPartition, int],
    since_ms: int | None,
) -> None:
    """To the first record at or after `since_ms` of each partition (its end if none), or to
    the ends when there is no `since_ms`."""
    found = (
        await consumer.offsets_for_times({tp: since_ms for tp in partitions})
        if since_ms is not None
        else {}
    )
    for tp in partitions:
        at = found.get(tp)
        consumer.seek(tp, ends[tp] if at is None else at.offset)
