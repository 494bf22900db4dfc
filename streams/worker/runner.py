"""`adstream worker`: run one decision worker until SIGTERM or SIGINT.

Addresses and tuning come from the environment (`streams.settings`). Several workers with the
same `ADSTREAM_TOPIC_PREFIX` and `ADSTREAM_APP_ID` form one consumer group and share the
partitions; state moves between them through the tables' changelogs.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import faust
import uvloop

from streams import logs
from streams.admin import ensure_changelogs, ensure_topics
from streams.lookaside import RedisLookaside
from streams.settings import Settings
from streams.topics import Topics
from streams.vast.breaker import CircuitBreaker
from streams.vast.retry import RetryPolicy
from streams.vast.transport import VastTransport
from streams.worker.app import create_worker
from streams.worker.collector import set_young_threshold
from streams.worker.commit_protocol import Committer
from streams.worker.metrics import Metrics
from streams.worker.recovery import TableManager
from streams.worker.tables import changelog_partitions
from streams.worker.upstreams import CampaignUpstreams

log = logging.getLogger(__name__)


def upstreams_for(
    settings: Settings, kind: type[CampaignUpstreams] = CampaignUpstreams
) -> CampaignUpstreams:
    """The worker's VAST resolver as the settings configure it."""
    return kind(
        VastTransport(
            block_private_addresses=settings.block_private_addresses,
            allowed_networks=settings.allowed_network_list,
        ),
        hop_timeout=settings.hop_timeout_s,
        chain_timeout=settings.chain_timeout_s,
        max_fetches=settings.max_fetches,
        max_ads=settings.max_ads_per_document,
        retry=RetryPolicy(max_retries=1),
        breaker=(
            CircuitBreaker(
                threshold=settings.breaker_timeouts,
                cooldown=settings.breaker_cooldown_s,
                min_failing=settings.breaker_min_failing_s,
            )
            if settings.breaker_timeouts
            else None
        ),
    )


def run(
    settings: Settings,
    upstreams: CampaignUpstreams | None = None,
    committer_class: type[Committer] = Committer,
    table_manager: type[TableManager] = TableManager,
) -> None:
    """Create missing topics, then run the Faust worker in this process until stopped.

    `upstreams`: the resolver, `upstreams_for(settings)` unless given; `committer_class`: the
    commit protocol; `table_manager`: how tables restore (tests and benchmarks give
    subclasses)."""
    logs.configure(settings.log_level)
    if settings.event_loop == "uvloop":
        # Before any loop exists: Faust's main loop and its consumer thread's loop alike.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    set_young_threshold(settings.gc_gen0)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    topics = Topics.named(settings.topic_prefix)
    partitions = asyncio.run(
        ensure_topics(settings.kafka_bootstrap_servers, topics, settings.partitions)
    )
    changelogs = changelog_partitions(settings.group_id, partitions.requests)
    asyncio.run(ensure_changelogs(settings.kafka_bootstrap_servers, changelogs))
    upstreams = upstreams or upstreams_for(settings)
    metrics = Metrics()
    lookaside = (
        RedisLookaside(
            settings.redis_url, prefix=settings.topic_prefix, errors=metrics.redis_errors
        )
        if settings.redis_url
        else None
    )
    worker = create_worker(
        settings,
        partitions,
        upstreams,
        metrics,
        lookaside,
        breaker=upstreams.breaker,
        committer_class=committer_class,
        table_manager=table_manager,
    )
    app = worker.app

    @app.on_before_shutdown.connect
    async def close_clients(app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await upstreams.aclose()
        await worker.skipped.close()
        if lookaside is not None:
            await lookaside.aclose()

    log.info(
        "worker %s starting: topics %s, partitions %s, store %s",
        settings.group_id,
        topics,
        partitions,
        settings.store,
    )
    try:
        # quiet: Faust's terminal spinner would set the root logger to DEBUG
        # (docs/architecture.md, "Performance facts").
        faust.Worker(
            app,
            loglevel=settings.log_level,
            quiet=True,
            logging_config=logs.dict_config(settings.log_level),
        ).execute_from_commandline()
    except SystemExit as exit:
        if exit.code in (0, None) and worker.committer.ended_cleanly:
            log.info("worker stopped cleanly")
        raise
