"""`adstream audit`: replay a deployment's topics and verify every decision (docs/design.md,
invariants 1-3 and 6), optionally reconciling the billing ledger.

Settings come from the environment like every command's (KAFKA_BOOTSTRAP_SERVERS,
ADSTREAM_TOPIC_PREFIX). The summary goes to stdout, progress to stderr. Exit status: 0 when
everything held, 1 when a violation was found (each is listed with its request id and kind),
2 when the audit could not run (bad arguments, Kafka unreachable, topics or ledger missing).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

import click
import msgspec

from streams.audit.findings import Summary
from streams.audit.reconcile import reconcile
from streams.audit.render import as_json, as_text
from streams.audit.replay import Replayed, ReplayError, replay
from streams.audit.verify import Audit, Auditor
from streams.audit.window import Window, parse_time
from streams.billing.ledger import Charge, Ledger, LedgerError
from streams.plot import available as plot_available
from streams.plot import write_png
from streams.settings import BadSetting, Settings
from streams.topics import Topics

PROGRESS_AFTER_S = 1.0
"""Replays shorter than this show no progress."""


class AuditFailed(click.ClickException):
    """The audit could not run (as opposed to: it ran and found violations)."""

    exit_code = 2


class _Time(click.ParamType):
    name = "TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("audit")
@click.option(
    "--from",
    "start_ms",
    type=_Time(),
    help="Check decisions from this event time on (ISO 8601 or Unix ms; inclusive).",
)
@click.option(
    "--to",
    "end_ms",
    type=_Time(),
    help="Check decisions before this event time (ISO 8601 or Unix ms; exclusive).",
)
@click.option(
    "--ledger",
    "ledger_target",
    metavar="LEDGER",
    help="Reconcile this billing ledger (SQLite file or postgresql:// URL) against the served "
    "decisions.",
)
@click.option("--json", "as_json_output", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw the decisions in the window into this PNG: per minute by outcome, spend "
    "against budget over event time, cap peaks (needs the `plot` extra).",
)
def audit(
    start_ms: int | None,
    end_ms: int | None,
    ledger_target: str | None,
    as_json_output: bool,
    plot: Path | None,
) -> None:
    """Replay campaigns, ad-requests, ad-served, ad-denied and budget-leases (read_committed,
    up to the end offsets seen at start) and verify every decision from the events alone:
    one decision per valid request, none without one, each under the configuration it names
    (campaign_version), caps and budgets respected, costs right, denials plausible, every
    served decision within the lease of its partition and every lease within the budget.

    With --from/--to only decisions with event times in the window are reported on, but
    caps and budgets are rebuilt from every served decision since the beginning (served
    ones after --to included), and requests are read from 48 h before --from to recognise
    re-sent ones. With --ledger, every served decision in the window must be charged there
    once at the same cost, and nothing else. A cap whose window is longer than the workers'
    impression history (ADSTREAM_IMPRESSION_HISTORY_S, read like theirs) is held to the last
    history's worth of its window, all a worker is sure to count.

    Exits 1 when any violation is found, 2 when the audit cannot run.
    """
    try:
        window = Window(start_ms, end_ms)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from exc
    if plot is not None and not plot_available():
        raise AuditFailed("--plot needs matplotlib: pip install 'adstream[plot]'")
    if ledger_target is not None:  # before a long replay
        try:
            Ledger.open(ledger_target, read_only=True).close()
        except LedgerError as exc:
            raise AuditFailed(str(exc)) from exc
    try:
        settings = Settings.from_env()
    except BadSetting as exc:
        raise AuditFailed(str(exc)) from None
    topics = Topics.named(settings.topic_prefix)
    # Caps wider than the workers' impression history are held to what they keep.
    auditor = Auditor(window, history_ms=settings.impression_history_s * 1000)
    progress = _Progress(sys.stderr)
    try:
        replayed = asyncio.run(
            replay(settings.kafka_bootstrap_servers, topics, auditor, progress=progress)
        )
    except ReplayError as exc:
        raise AuditFailed(str(exc)) from exc
    finally:
        progress.close()
    result = auditor.finish()
    summary = result.summary
    if ledger_target is not None:
        summary = _reconciled(summary, result, ledger_target, topics, replayed, window)
    if as_json_output:
        click.echo(as_json(summary))
    else:
        label = (
            f"{topics.campaigns}, {topics.requests}, {topics.served}, {topics.denied}, "
            f"{topics.leases}"
        )
        click.echo(as_text(summary, label, replayed.seconds))
    if plot is not None:
        write_png(result.timeline, plot, f"adstream audit ({topics.requests})")
        click.echo(f"plot: {plot}", err=True)
    if not summary.ok:
        sys.exit(1)


def _reconciled(
    summary: Summary,
    result: Audit,
    target: str,
    topics: Topics,
    replayed: Replayed,
    window: Window,
) -> Summary:
    try:
        with Ledger.open(target, read_only=True) as ledger:
            if ledger.topic not in (None, topics.served):
                raise AuditFailed(
                    f"the ledger {ledger.where} bills {ledger.topic!r}, not {topics.served!r}"
                )
            billed_to, charges = _cut(ledger)
            found, violations = reconcile(
                ledger.where, result.served, charges, billed_to, replayed.ends["served"], window
            )
    except LedgerError as exc:
        raise AuditFailed(str(exc)) from exc
    return msgspec.structs.replace(
        summary,
        ledger=found,
        violations=[*summary.violations, *violations],
    )


def _cut(ledger: Ledger, attempts: int = 10) -> tuple[dict[int, int], list[Charge]]:
    """The ledger's offsets and charges as of one moment, while billing may be writing: each
    batch moves offsets and charges in one transaction, so charges read between two equal
    readings of the offsets belong to exactly those offsets."""
    for _ in range(attempts):
        before = ledger.offsets()
        charges = list(ledger.charges())
        if ledger.offsets() == before:
            return before, charges
    raise AuditFailed(f"the ledger {ledger.where} kept changing while it was read; try again")


class _Progress:
    """Progress of a long replay on stderr: one updated line on a terminal, else a line
    every few seconds."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.shown = 0.0
        self.active = False

    def __call__(self, read: int, total: int) -> None:
        now = time.monotonic()
        if now - self.started < PROGRESS_AFTER_S:
            return
        if now - self.shown < (0.2 if self.tty else 5.0) and read < total:
            return
        self.shown, self.active = now, True
        share = f"{100 * read // total}%" if total else "-"
        line = f"replaying: {read:,} of {total:,} records ({share}), {now - self.started:.0f} s"
        if self.tty:
            self.stream.write(f"\r{line}")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.active and self.tty:
            self.stream.write("\n")
            self.stream.flush()
