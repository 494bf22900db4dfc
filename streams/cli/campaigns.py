"""`adstream campaigns load FILE`: publish campaign configurations to the campaigns topic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from streams.admin import CampaignFileError, ensure_topics, publish_campaigns, read_campaigns
from streams.settings import Settings
from streams.topics import Topics


@click.group("campaigns")
def campaigns_group() -> None:
    """Manage campaign configurations."""


@campaigns_group.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def load(path: Path) -> None:
    """Validate every campaign in PATH (JSON list or TOML [[campaigns]]), then publish them."""
    settings = Settings.from_env()
    try:
        campaigns = read_campaigns(path)
    except CampaignFileError as exc:
        raise click.ClickException(str(exc)) from exc
    topics = Topics.named(settings.topic_prefix)

    async def publish() -> list[int]:
        await ensure_topics(settings.kafka_bootstrap_servers, topics, settings.partitions)
        return await publish_campaigns(
            settings.kafka_bootstrap_servers, topics.campaigns, campaigns
        )

    offsets = asyncio.run(publish())
    for campaign, offset in zip(campaigns, offsets, strict=True):
        click.echo(f"{campaign.campaign_id}\tversion {offset}")
    click.echo(f"published {len(campaigns)} campaigns to {topics.campaigns}", err=True)
