"""Administration: the topics a deployment needs, and publishing campaign configurations."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from models.codec import InvalidEvent, decode_campaign, encode
from models.events import Campaign
from streams.topics import Partitions, Topics

# Records carry their event time as timestamp, so time-based retention would delete a replay
# or a backfill within minutes of writing it: the topics keep everything unless told otherwise.
KEEP_FOREVER = {"retention.ms": "-1"}
COMPACTED = {"cleanup.policy": "compact"}


class BrokerUnreachable(Exception):
    """No broker at the bootstrap address answered within the time given."""


async def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    """Return once a broker at `bootstrap` answers a metadata request; `BrokerUnreachable`
    after `timeout_s` (aiokafka's own clients would retry, or wait, without a bound)."""
    deadline = time.monotonic() + timeout_s
    with _quiet("aiokafka"):  # an error line per attempt; the outcome is told once, below
        while (remaining := deadline - time.monotonic()) > 0:
            client = AIOKafkaClient(
                bootstrap_servers=bootstrap, request_timeout_ms=max(int(remaining * 1000), 1)
            )
            try:
                await asyncio.wait_for(client.bootstrap(), remaining)
                return
            except (KafkaError, OSError, TimeoutError):
                pass  # refused, unreachable or silent: all the same to whoever waits
            finally:
                await client.close()
            await asyncio.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
    raise BrokerUnreachable(
        f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s; "
        "check KAFKA_BOOTSTRAP_SERVERS (`adstream infra up` starts a local broker)"
    )


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def ensure_topics(bootstrap: str, topics: Topics, partitions: int) -> Partitions:
    """Create what is missing (campaigns compacted) and return the partition counts in force.

    `budget-leases` must be partitioned exactly like `ad-requests`: the worker reads both as
    one stream, and a grant reaches the lease of the partition it names.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = await partition_counts(admin, list(topics.public))
        request_partitions = existing.get(topics.requests, partitions)
        wanted = {name: partitions for name in topics.public}
        wanted[topics.requests] = wanted[topics.leases] = request_partitions
        wanted[topics.campaigns] = existing.get(topics.campaigns, partitions)
        missing = [
            NewTopic(
                name,
                num_partitions=count,
                replication_factor=1,
                topic_configs=COMPACTED if name == topics.campaigns else KEEP_FOREVER,
            )
            for name, count in wanted.items()
            if name not in existing
        ]
        if missing:
            # Another worker of the group may have created them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        counts = await _created(admin, [topics.requests, topics.campaigns, topics.leases])
        if counts[topics.leases] != counts[topics.requests]:
            raise RuntimeError(
                f"{topics.leases} has {counts[topics.leases]} partitions but "
                f"{topics.requests} has {counts[topics.requests]}; they must match"
            )
        return Partitions(requests=counts[topics.requests], campaigns=counts[topics.campaigns])
    finally:
        await admin.close()


async def ensure_changelogs(bootstrap: str, changelogs: Mapping[str, int]) -> None:
    """Create the tables' changelog topics that are missing, compacted as Faust would, and
    wait until the cluster's metadata shows them.

    Faust creates missing changelogs itself while it starts, but its partition assignor may
    run before the new topics show in the consumer's metadata; it then leaves them out of
    the assignment ("Ignoring missing topic") until the next rebalance, and the worker's
    table routes answer 503 meanwhile.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = await partition_counts(admin, list(changelogs))
        missing = [
            NewTopic(name, num_partitions=count, replication_factor=1, topic_configs=COMPACTED)
            for name, count in changelogs.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        await _created(admin, list(changelogs))
    finally:
        await admin.close()


async def _created(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0
) -> dict[str, int]:
    """Partition counts of `names`, once the cluster's metadata shows every one of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = await partition_counts(admin, names)
        if all(name in counts for name in names):
            return counts
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {names} not visible {timeout_s:.0f} s after creation")
        await asyncio.sleep(0.1)


async def partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """The partition count of each of `names` that exists."""
    # Describing a missing topic can make a broker auto-create it with default settings,
    # so only topics that already exist are described.
    existing = set(await admin.list_topics())
    names = [name for name in names if name in existing]
    if not names:
        return {}
    described = await admin.describe_topics(names)
    return {
        topic["topic"]: len(topic["partitions"])
        for topic in described
        if topic.get("error_code", 0) == 0 and topic["partitions"]
    }


class CampaignFileError(ValueError):
    """A campaigns file that cannot be loaded; nothing from it was published."""


def read_campaigns(path: Path) -> list[Campaign]:
    """A JSON list of campaigns, or a TOML file of `[[campaigns]]` tables, each validated.

    Every entry is checked before anything is published, so a bad file changes nothing:
    unknown fields, values the worker's state cannot hold and a campaign_id given twice are
    refused with the rest.
    """
    try:
        text = path.read_bytes()
        if path.suffix == ".toml":
            entries = _toml_campaigns(text.decode())
        else:
            text.decode()  # JSON text is UTF-8 (RFC 8259): this names the first bad byte
            # Each entry meets the worker's own validation as it stands in the file, so the
            # file and the `campaigns` topic refuse the same messages.
            entries = [bytes(raw) for raw in msgspec.json.decode(text, type=list[msgspec.Raw])]
    except (OSError, ValueError, RecursionError, msgspec.DecodeError) as exc:
        raise CampaignFileError(f"{path}: cannot read a list of campaigns: {exc}") from exc
    campaigns, problems = [], []
    first_at: dict[str, int] = {}
    for index, entry in enumerate(entries):
        try:
            campaign = decode_campaign(entry)
        except InvalidEvent as exc:
            problems.append(f"  #{index} ({_name_of(entry)}): {exc}")
            continue
        # Both would be published and the last would silently win.
        first = first_at.setdefault(campaign.campaign_id, index)
        if first != index:
            problems.append(
                f"  #{index} ({campaign.campaign_id}): the same campaign_id as #{first}"
            )
        campaigns.append(campaign)
    if problems:
        raise CampaignFileError(
            f"{path}: invalid campaigns, none published:\n" + "\n".join(problems)
        )
    return campaigns


def _toml_campaigns(text: str) -> list[bytes]:
    """The `[[campaigns]]` tables of a TOML document, each as JSON."""
    document = tomllib.loads(text)
    unknown = sorted(set(document) - {"campaigns"})
    if unknown:
        close = difflib.get_close_matches(unknown[0], ["campaigns"], n=1)
        hint = " (did you mean 'campaigns'?)" if close else ""
        raise ValueError(f"unknown key {unknown[0]!r}{hint}: only [[campaigns]] tables belong here")
    campaigns = document.get("campaigns")
    if not isinstance(campaigns, list):
        raise ValueError("no [[campaigns]] tables")
    return [msgspec.json.encode(entry) for entry in campaigns]


class _Named(msgspec.Struct):
    campaign_id: object = "?"


def _name_of(entry: bytes) -> object:
    """The campaign_id of an entry, or '?', for naming it in a report."""
    try:
        return msgspec.json.decode(entry, type=_Named).campaign_id
    except (ValueError, msgspec.DecodeError, RecursionError):
        return "?"


async def publish_campaigns(bootstrap: str, topic: str, campaigns: Sequence[Campaign]) -> list[int]:
    """Publish (idempotent, acks=all), keyed by campaign_id; returns each one's offset,
    which is the `campaign_version` decisions will name."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, encode(campaign), key=campaign.campaign_id.encode())
            for campaign in campaigns
        ]
        return [(await future).offset for future in futures]
    finally:
        await producer.stop()
