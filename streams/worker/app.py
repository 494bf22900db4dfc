"""The worker, top to bottom: topics in, one decision stage, decisions out.

    campaigns ─────────▶ every worker's campaign view (rules in force)
        └──check──▶ ad-requests-dlq (invalid campaigns)

    ad-requests (user) ──┐                 ┌─▶ ad-served / ad-denied / ad-requests-dlq
                         ├──decide─────────┤
    budget-leases ───────┘                 └─▶ budget-leases (asks, returns; grants, reclaims)

`decide` (`streams.worker.decide_stage`) validates, de-duplicates, applies the campaign's
rules and its user's caps, spends from its partition's budget lease, resolves the VAST
upstream; the same stream carries the lease records, so each campaign's bank
(`streams.worker.lease_desk`) answers its partitions' asks there. Every worker reads every
campaign's rules (`streams.worker.campaign_view`); `check` dead-letters invalid ones.

Stages read batches (`take_events`) and write through `streams.worker.commit_protocol`, which
makes Faust's exactly-once hold: every output and table write commits in one Kafka transaction
with the offsets of the events that caused it. Faust's Kafka transport and its table recovery
are adstream's subclasses (`streams.worker.kafka_transport`, `streams.worker.recovery`), set in
the app's settings.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import faust
import msgspec
from faust.types import TP, EventT, StreamT
from prometheus_client import generate_latest

from models.codec import encode
from streams.lookaside import StateView, cap_view, spend_view
from streams.settings import Settings
from streams.state.frequency import Impressions
from streams.topics import Partitions, Topics, key_partition
from streams.vast.breaker import CircuitBreaker
from streams.worker.assignor import PartitionAssignor
from streams.worker.campaign_view import CampaignView
from streams.worker.campaigns_stage import CampaignChecker
from streams.worker.collector import freeze_start_up
from streams.worker.commit_protocol import Committer, TransactionalSender, TransactionIds
from streams.worker.committed_store import SCHEME as STORE_SCHEME
from streams.worker.crash_journal import CRASHES_BEFORE_ISOLATING, CrashJournal
from streams.worker.decide_stage import Decider, Lookaside, Resolver
from streams.worker.event_context import event_context
from streams.worker.exit_status import FAILED_EXIT
from streams.worker.faust_version import check_faust_version
from streams.worker.kafka_transport import Consumer, broker_url
from streams.worker.lease_desk import LeaseDesk
from streams.worker.metrics import Metrics
from streams.worker.outputs import Outputs
from streams.worker.recovery import RestoredTable, TableManager
from streams.worker.skipped_events import SkippedEvents
from streams.worker.status import DecisionRates, WorkerStatus, campaign_spend, worker_status
from streams.worker.status_view import PAGE, status_view
from streams.worker.tables import Tables, frequency_key

log = logging.getLogger(__name__)

JSON = "application/json"
# aiohttp takes the charset separately, so Prometheus' own constant (which names it) won't do.
PROMETHEUS_TEXT = "text/plain; version=0.0.4"


class Worker(msgspec.Struct):
    """Everything one worker process holds, for the runner and for tests to reach."""

    app: faust.App
    topics: Topics
    tables: Tables
    metrics: Metrics
    view: CampaignView
    decider: Decider
    committer: Committer
    skipped: SkippedEvents


def create_worker(
    settings: Settings,
    partitions: Partitions,
    resolver: Resolver,
    metrics: Metrics,
    lookaside: Lookaside | None = None,
    breaker: CircuitBreaker | None = None,
    committer_class: type[Committer] = Committer,
    table_manager: type[TableManager] = TableManager,
) -> Worker:
    """`breaker`: the resolver's, whose states the worker reports; `committer_class`: the
    commit protocol (a test's subclass); `table_manager`: how tables restore (a benchmark's
    subclass)."""
    check_faust_version()
    app = faust.App(
        # Faust names the consumer group, the changelogs, its assignor topic and the
        # transactional ids after the app id: with the prefix in it, deployments that
        # differ only in the prefix never meet on the cluster.
        settings.group_id,
        broker=broker_url(
            settings.kafka_bootstrap_servers, fetch_max_wait_ms=settings.fetch_wait_ms
        ),
        broker_client_id=settings.group_id,
        store=f"{STORE_SCHEME}://" if settings.store == "rocksdb" else "memory://",
        datadir=settings.data_dir,
        processing_guarantee="exactly_once",
        broker_commit_interval=settings.commit_interval_s,
        broker_commit_livelock_soft_timeout=settings.stall_warning_s,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=settings.standby_replicas,
        consumer_group_instance_id=settings.instance_id or None,
        # A crashed worker's partitions move after this long without a heartbeat.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        topic_partitions=partitions.requests,
        topic_replication_factor=1,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_in_thread=False,
        producer_linger_ms=1,
        # Faust hands a fetch's records over one by one before it fetches again: a bound keeps
        # a lease grant from waiting behind a whole backlog of requests (kafka_transport, 14).
        broker_max_poll_records=settings.batch_size,
        # Decisions are ~2.5 KB (the VAST document rides along): aiokafka's 16 KB batches
        # made a batch of decisions wait on the broker once per handful of records.
        producer_max_batch_size=512 * 1024,
        Table=RestoredTable,
        TableManager=table_manager,
        PartitionAssignor=PartitionAssignor,
    )
    topics = Topics.named(settings.topic_prefix)
    tables = Tables(app, partitions.requests)
    transactions = TransactionIds(app)
    sender = TransactionalSender(app, transactions)
    skipped = SkippedEvents(app, settings.kafka_bootstrap_servers)
    committer = committer_class(
        app,
        sender,
        skipped,
        behind_interval_s=settings.behind_commit_interval_s,
        behind_lag=settings.batch_size,
    )
    view = CampaignView(settings.kafka_bootstrap_servers, topics.campaigns)
    outputs = Outputs(sender, topics.dlq, metrics)
    decider = Decider(
        outputs,
        tables,
        topics,
        view,
        LeaseDesk(tables, topics.leases, view, outputs),
        resolver,
        metrics,
        lookaside,
        partitions=partitions.requests,
        history_ms=settings.impression_history_s * 1000,
    )
    checker = CampaignChecker(Outputs(sender, topics.dlq, metrics))

    def raw_topic(*names: str) -> Any:
        return app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    tables.seen.table.on_recover(decider.rebuild_seen_expiry)
    tables.frequency.table.on_recover(decider.rebuild_expiry)

    async def run_stage(
        stream: StreamT[Any],
        handle: Callable[[Sequence[EventT[Any]]], Awaitable[None]],
        outputs: Outputs,
        journal: CrashJournal,
        finished: Callable[[Sequence[EventT[Any]]], Mapping[TP, int]],
    ) -> None:
        committer.install()
        skipped.install()
        # Grants wake parked requests: they must not wait behind them (kafka_transport, 14).
        cast(Consumer, app.consumer).deliver_first([topics.leases])
        await view.caught_up.wait()
        batches: AsyncIterator[Sequence[EventT[Any]]] = cast(Any, stream).take_events(
            settings.batch_size, settings.batch_wait_s
        )
        async for taken in batches:
            async with committer.batch():
                try:
                    events = await skipped.complete(taken)
                    for handling, run in journal.plan(events):
                        journal.begin(run)
                        if handling == "set_aside":
                            await set_aside(run[0], outputs)
                        else:
                            await handle(run)
                        journal.end(run)
                except Exception:
                    # The batch's outputs may sit half sent in open transactions and its table
                    # writes are in local state, so no commit may follow, and a stage that
                    # stops must not leave a worker that looks alive. Leave as after a SIGKILL:
                    # the broker aborts the transactions, and a restarted worker restores the
                    # tables from their changelogs and processes the batch again.
                    log.critical("a stage failed mid-batch: the worker exits", exc_info=True)
                    logging.shutdown()
                    os._exit(FAILED_EXIT)
                for tp, offset in finished(events).items():
                    committer.finished(tp, offset)

    async def set_aside(event: EventT[Any], outputs: Outputs) -> None:
        with event_context(event):
            await outputs.dead_letter(
                event,
                "crash_loop",
                f"the worker exited {CRASHES_BEFORE_ISOLATING} or more times in a row while "
                "processing this message; it was set aside unprocessed",
            )
        await outputs.delivered()

    journals = {
        name: CrashJournal.open(Path(settings.data_dir) / f"crash-journal-{name}.json")
        for name in ("decide", "campaigns")
    }

    def each_offset(events: Sequence[EventT[Any]]) -> Mapping[TP, int]:
        return {event.message.tp: event.message.offset for event in events}

    # The decide stage's runs and the rule-change timer take turns, and each reads what may
    # commit (`decider.finished()`) in its turn: read while the other is half-way, it counts
    # events neither decided nor parked yet (a request about to wait for its lease had its
    # offset committed without a decision, lost with a crash before the grant).
    decider_turn = asyncio.Lock()

    async def decide_run(events: Sequence[EventT[Any]]) -> None:
        async with decider_turn:
            await decider.handle(events)
            for tp, offset in decider.finished().items():
                committer.finished(tp, offset)

    @app.agent(raw_topic(topics.requests, topics.leases), name="decide")
    async def decide(stream: StreamT[Any]) -> None:
        if settings.gc_freeze:
            await view.caught_up.wait()  # restored, rules read: what stays is alive now
            freeze_start_up()
        await run_stage(stream, decide_run, outputs, journals["decide"], lambda _: {})

    @app.agent(raw_topic(topics.campaigns), name="campaigns")
    async def check_campaigns(stream: StreamT[Any]) -> None:
        await run_stage(stream, checker.handle, checker.outputs, journals["campaigns"], each_offset)

    @app.task  # type: ignore[untyped-decorator]
    async def follow_campaigns() -> None:
        await view.follow()

    @app.timer(interval=0.1)  # type: ignore[untyped-decorator]
    async def apply_rule_changes() -> None:
        """Rules that changed reach the banks and the parked requests between batches."""
        if not view.caught_up.is_set() or app.rebalancing:
            return
        async with committer.batch(), decider_turn:
            await decider.tick()
            for tp, offset in decider.finished().items():
                committer.finished(tp, offset)

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        (revoked,) = args
        decider.forget(revoked)

    rates = DecisionRates(started=time.monotonic())

    def current_status() -> WorkerStatus:
        return worker_status(app, tables, view, topics, committer.committed(), breaker)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        for name in ("seen", "frequency", "leases", "banks"):
            metrics.table_keys.labels(table=name).set(len(getattr(tables, name)))
        metrics.show(current_status())
        return web.bytes(generate_latest(metrics.registry), content_type=PROMETHEUS_TEXT)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def sample_decisions() -> None:
        rates.observe(time.monotonic(), metrics.decision_totals())

    @app.page("/adstream/status/")
    async def status_page(web: Any, request: Any) -> Any:
        return web.html(PAGE)

    @app.page("/adstream/status.json")
    async def status_json(web: Any, request: Any) -> Any:
        view = status_view(
            settings.group_id,
            datetime.datetime.now(datetime.UTC),
            current_status(),
            metrics.decision_totals(),
            rates.per_second(),
        )
        return web.bytes(encode(view), content_type=JSON)

    @app.page("/adstream/ready/")
    async def ready_page(web: Any, request: Any) -> Any:
        """200 once partitions are assigned, tables restored and campaign rules read."""
        ready = (
            not app.rebalancing
            and bool(app.consumer.assignment())
            and cast(Any, app.tables).recovery.completed.is_set()
            and view.caught_up.is_set()
        )
        return web.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/adstream/state/{campaign_id}/")
    async def state_page(web: Any, request: Any, campaign_id: str) -> Any:
        """The lookaside's fallback: a campaign's rules, what the leases of the partitions
        this worker owns have spent (a campaign's spend is the sum over the workers), and
        with ?user= the user's caps when the user's partition is one of them."""
        rules = view.get(campaign_id)
        if rules is None:
            return web.bytes(encode(StateView(campaign_id, known=False)), content_type=JSON)
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.requests}
        spent = campaign_spend(tables, campaign_id, owned)
        cap = None
        user_id = request.query.get("user")
        if user_id and rules.caps and key_partition(user_id, partitions.requests) in owned:
            entry = tables.frequency.get(frequency_key(campaign_id, user_id))
            cap = cap_view(entry.impressions if entry else Impressions(), rules)
        view_ = StateView(campaign_id, True, rules.version, spend_view(spent, rules), cap)
        return web.bytes(encode(view_), content_type=JSON)

    return Worker(app, topics, tables, metrics, view, decider, committer, skipped)
