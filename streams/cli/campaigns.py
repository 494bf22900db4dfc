"""`adstream campaigns load FILE`: publish campaign configurations to the campaigns topic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from streams.admin import CampaignFileError, ensure_topics, publish_campaigns, read_campaigns
from streams.cli.environment import CommandFailed, json_text, reach_broker, settings_from_env
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
    topics = Topics.named(settings.topic_prefix, settings.app_id)
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
