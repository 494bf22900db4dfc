"""How an audit's `Summary` is shown: a table for people, a JSON document for programs.

Money leaves integer micros only here, as exact decimal strings (`models.money.from_micros`).
Both forms list every violation with its kind and request id.
"""

from __future__ import annotations

from typing import Any

import msgspec

from models.money import from_micros
from streams.audit.findings import MEANING, Summary
from streams.audit.window import Window, iso
from streams.plain_table import plain_table

_TOPIC_NAMES = {
    "campaigns": "campaigns",
    "requests": "ad-requests",
    "served": "ad-served",
    "denied": "ad-denied",
    "leases": "budget-leases",
}


def _window(summary: Summary) -> Window:
    return Window(summary.window_start_ms, summary.window_end_ms)


def as_json(summary: Summary) -> bytes:
    return msgspec.json.format(msgspec.json.encode(as_document(summary)))


def as_document(summary: Summary) -> dict[str, Any]:
    def moment(t_ms: int | None) -> str | None:
        return None if t_ms is None else iso(t_ms)

    ledger = summary.ledger
    return {
        "ok": summary.ok,
        "window": {
            "from": moment(summary.window_start_ms),
            "to": moment(summary.window_end_ms),
            "from_ms": summary.window_start_ms,
            "to_ms": summary.window_end_ms,
        },
        "records": {_TOPIC_NAMES[kind]: count for kind, count in summary.records.items()},
        "requests": summary.requests,
        "valid": summary.valid,
        "dead_lettered": summary.dead_lettered,
        "duplicates": summary.duplicates,
        "distinct": summary.distinct,
        "served": summary.served,
        "denied": summary.denied,
        "spend": [
            {
                "campaign_id": row.campaign_id,
                "currency": row.currency,
                "served": row.served,
                "spent": from_micros(row.micros),
            }
            for row in summary.spend
        ],
        "ledger": None
        if ledger is None
        else {
            "path": ledger.path,
            "charges": ledger.charges,
            "matched": ledger.matched,
            "unbilled": ledger.unbilled,
            "beyond_replay": ledger.beyond_replay,
            "charged": {currency: from_micros(m) for currency, m in ledger.micros.items()},
        },
        "violations_by_kind": summary.by_kind(),
        "violations": [msgspec.to_builtins(v) for v in summary.violations],
    }


def as_text(summary: Summary, topics_label: str, seconds: float) -> str:
    read = ", ".join(
        f"{_TOPIC_NAMES[kind]} {summary.records.get(kind, 0):,}" for kind in _TOPIC_NAMES
    )
    denied = sum(summary.denied.values())
    letters = ", ".join(f"{reason} {count:,}" for reason, count in summary.dead_lettered.items())
    counts = [
        ["requests", f"{summary.requests:,}", ""],
        ["  dead-lettered", f"{sum(summary.dead_lettered.values()):,}", letters],
        ["  valid", f"{summary.valid:,}", ""],
        ["    re-sent (within 24 h)", f"{summary.duplicates:,}", "need no decision"],
        ["    distinct", f"{summary.distinct:,}", "need one decision each"],
        ["decisions", f"{summary.served + denied:,}", ""],
        ["  served", f"{summary.served:,}", ""],
        ["  denied", f"{denied:,}", ""],
        *([f"    {reason}", f"{count:,}", ""] for reason, count in summary.denied.items()),
    ]
    sections = [
        f"audit of {topics_label} (read_committed)",
        f"window: {_window(summary).describe()}",
        f"read {sum(summary.records.values()):,} records in {seconds:.1f} s ({read})",
        "",
        plain_table(["", "count", ""], counts, left={0, 2}),
        "",
        "spend of the served decisions (exact)",
    ]
    if summary.spend:
        rows = [
            [row.campaign_id, row.currency, f"{row.served:,}", from_micros(row.micros)]
            for row in summary.spend
        ]
        sections.append(plain_table(["campaign", "cur", "served", "spent"], rows, left={0, 1}))
    else:
        sections.append("  (nothing served)")
    ledger = summary.ledger
    if ledger is not None:
        charged = ", ".join(f"{from_micros(m)} {cur}" for cur, m in ledger.micros.items())
        sections += [
            "",
            f"ledger {ledger.path}: {ledger.charges:,} charges ({charged or 'nothing'}), "
            f"{ledger.matched:,} matching their served decision; {ledger.unbilled:,} served "
            f"not billed yet, {ledger.beyond_replay:,} charges billed after the replay began",
        ]
    sections.append("")
    if summary.ok:
        sections.append(
            "violations: none (every decision checked against the configuration it names)"
        )
        return "\n".join(sections)
    kinds = [[kind, f"{count:,}", MEANING[kind]] for kind, count in summary.by_kind().items()]
    listed = [[v.request_id or "-", v.kind, v.detail] for v in summary.violations]
    sections += [
        f"VIOLATIONS: {len(summary.violations):,}",
        plain_table(["kind", "count", "meaning"], kinds, left={0, 2}),
        "",
        plain_table(["request_id", "kind", "detail"], listed, left={0, 1, 2}),
    ]
    return "\n".join(sections)
