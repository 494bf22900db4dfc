"""`adstream campaigns load FILE`: publish campaign configurations to the campaigns topic;
`campaigns list` and `campaigns show ID`: what is in force and what it has spent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click
import msgspec

from streams.admin import CampaignFileError, ensure_topics, publish_campaigns, read_campaigns
from streams.campaign_status import CampaignsInForce, CampaignStatus, SpendTally, statuses
from streams.cli.environment import CommandFailed, json_text, reach_broker, settings_from_env
from streams.committed_reader import MissingTopic, read_committed
from streams.plain_table import plain_table
from streams.settings import Settings
from streams.topics import Topics


@click.group("campaigns")
def campaigns_group() -> None:
    """Manage campaign configurations."""


@campaigns_group.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Report (or the error) as JSON on stdout.")
def load(path: Path, as_json: bool) -> None:
    """Validate every campaign in PATH (JSON list or TOML [[campaigns]]), then publish them.

    Prints each campaign's version (its offset in the campaigns topic)."""
    settings = settings_from_env(as_json=as_json)
    try:
        campaigns = read_campaigns(path)
    except CampaignFileError as exc:
        raise CommandFailed(str(exc), as_json=as_json) from exc
    topics = Topics.named(settings.topic_prefix)
    reach_broker(settings, as_json=as_json)

    async def publish() -> list[int]:
        await ensure_topics(settings.kafka_bootstrap_servers, topics, settings.partitions)
        return await publish_campaigns(
            settings.kafka_bootstrap_servers, topics.campaigns, campaigns
        )

    offsets = asyncio.run(publish())
    if as_json:
        versions = [
            {"campaign_id": campaign.campaign_id, "version": offset}
            for campaign, offset in zip(campaigns, offsets, strict=True)
        ]
        click.echo(json_text({"ok": True, "topic": topics.campaigns, "campaigns": versions}))
        return
    for campaign, offset in zip(campaigns, offsets, strict=True):
        click.echo(f"{campaign.campaign_id}\tversion {offset}")
    click.echo(f"published {len(campaigns)} campaigns to {topics.campaigns}", err=True)


@campaigns_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON (or the error) on stdout.")
def list_command(as_json: bool) -> None:
    """The campaigns in force (the latest valid record of each in the campaigns topic, its
    offset the version) and their spend (every served decision, read_committed), lifetime
    and on today's UTC day of event time, against their budgets."""
    found = _statuses(settings_from_env(as_json=as_json), as_json)
    if as_json:
        click.echo(json_text({"ok": True, "campaigns": found}))
    elif not found:
        click.echo("no campaigns in force", err=True)
    else:
        click.echo(_table(found))


@campaigns_group.command("show")
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="JSON (or the error) on stdout.")
def show(campaign_id: str, as_json: bool) -> None:
    """One campaign's rules in force and spend, as `campaigns list` finds them."""
    found = _statuses(settings_from_env(as_json=as_json), as_json)
    status = next((s for s in found if s.campaign_id == campaign_id), None)
    if status is None:
        raise CommandFailed(f"no campaign {campaign_id!r} in force", as_json=as_json)
    if as_json:
        click.echo(json_text({"ok": True, **msgspec.structs.asdict(status)}))
    else:
        click.echo(_details(status))


def _statuses(settings: Settings, as_json: bool) -> list[CampaignStatus]:
    topics = Topics.named(settings.topic_prefix)
    in_force = CampaignsInForce()
    tally = SpendTally(time.time_ns() // 1_000_000)
    handlers = {
        topics.campaigns: lambda record: in_force.add(record.key, record.value, record.offset),
        topics.served: lambda record: tally.add(record.value),
    }
    reach_broker(settings, as_json=as_json)
    try:
        asyncio.run(read_committed(settings.kafka_bootstrap_servers, handlers))
    except MissingTopic as exc:
        raise CommandFailed(str(exc), as_json=as_json) from None
    if tally.unreadable:
        click.echo(
            f"{tally.unreadable} records of {topics.served} were not served events", err=True
        )
    return statuses(in_force, tally)


def _table(found: list[CampaignStatus]) -> str:
    header = ["campaign", "state", "version", "cur", "cpm", "served", "spent", "lifetime budget"]
    header += ["today", "daily budget"]
    rows = []
    for status in found:
        spend, config = status.spend, status.config
        rows.append(
            [
                status.campaign_id,
                "active" if status.active else "paused",
                str(status.version),
                spend.currency,
                config.cpm,
                f"{spend.served:,}",
                spend.lifetime.spent,
                spend.lifetime.budget or "-",
                spend.today.spent,
                spend.today.budget or "-",
            ]
        )
    return plain_table(header, rows, left={0, 1, 3})


def _details(status: CampaignStatus) -> str:
    config, spend = status.config, status.spend
    caps = ", ".join(f"{cap.max} per {cap.window_s} s" for cap in config.frequency_caps)
    lines = [
        f"campaign     {status.campaign_id} (version {status.version})",
        f"state        {'active' if status.active else 'paused'}",
        f"vast_url     {config.vast_url}",
        f"cpm          {config.cpm} {config.currency}",
        f"caps         {caps or 'none'}",
        f"anonymous    {config.anonymous_policy}",
        f"served       {spend.served:,}",
    ]
    for name, budget in (("lifetime", spend.lifetime), (f"today {spend.day}", spend.today)):
        limit = (
            "no budget"
            if budget.budget is None
            else (f"of {budget.budget}, {budget.remaining} left")
        )
        lines.append(f"{'spent ' + name:<12} {budget.spent} {spend.currency} {limit}")
    return "\n".join(lines)
