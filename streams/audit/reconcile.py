"""The billing ledger against the served decisions (invariant 3): pure, no file or Kafka.

Every served decision inside the window must be charged exactly once, for the same campaign,
event time, cost and currency, at the `ad-served` position it was read from; and no charge
may exist without a served decision. Two things are not wrong and are only counted: billing
lags (a served decision past the offsets the ledger has read, `unbilled`), and billing ran on
after the replay began (a charge past the end offsets the audit read, `beyond_replay`). A
charge past the offsets the ledger itself says it has read is wrong like any other extra one.

`charges` and `billed_to` must be one consistent cut of the ledger (see the command's reading).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from models.money import from_micros, to_micros
from streams.audit.findings import LedgerSummary, Violation
from streams.audit.window import Window
from streams.billing.ledger import Charge
from streams.decision_reader import Decision


def reconcile(
    path: str,
    served: Iterable[Decision],
    charges: Iterable[Charge],
    billed_to: Mapping[int, int],
    read_to: Mapping[int, int],
    window: Window,
) -> tuple[LedgerSummary, list[Violation]]:
    """`served`: one served decision per request; `billed_to`: partition -> the next offset
    the ledger will read; `read_to`: partition -> the end offset the audit read `ad-served` to.
    """
    expected = {d.payload["request_id"]: d for d in served if d.payload["timestamp"] in window}
    charged: defaultdict[str, list[Charge]] = defaultdict(list)
    beyond = inside = 0
    micros: Counter[str] = Counter()
    for charge in charges:
        if charge.timestamp not in window:
            continue
        inside += 1
        micros[charge.currency] += charge.cost_micros
        unread = read_to.get(charge.partition, 0) <= charge.offset
        if (
            charge.request_id not in expected
            and unread
            and charge.offset < billed_to.get(charge.partition, 0)
        ):
            beyond += 1
            continue
        charged[charge.request_id].append(charge)
    violations = []
    matched = unbilled = 0
    for request_id, decision in expected.items():
        found = charged.pop(request_id, [])
        if not found:
            if decision.offset >= billed_to.get(decision.partition, 0):
                unbilled += 1
            else:
                violations.append(
                    Violation(
                        "ledger_missing",
                        request_id,
                        f"{decision.payload['where']} is billed past but not charged",
                    )
                )
            continue
        problems = [_differences(decision, charge) for charge in found]
        if len(found) > 1:
            violations.append(
                Violation("ledger_extra", request_id, f"charged {len(found)} times in the ledger")
            )
        elif problems[0]:
            violations.append(Violation("ledger_mismatch", request_id, problems[0]))
        else:
            matched += 1
    for request_id, found in charged.items():
        for charge in found:
            violations.append(
                Violation(
                    "ledger_extra",
                    request_id,
                    f"charge of {from_micros(charge.cost_micros)} {charge.currency} "
                    f"(ad-served[{charge.partition}]@{charge.offset}) for no served decision",
                )
            )
    summary = LedgerSummary(
        path=path,
        charges=inside,
        matched=matched,
        unbilled=unbilled,
        beyond_replay=beyond,
        micros=dict(sorted(micros.items())),
    )
    return summary, violations


def _differences(decision: Decision, charge: Charge) -> str:
    payload = decision.payload
    wanted = {
        "campaign_id": payload["campaign_id"],
        "timestamp": payload["timestamp"],
        "cost": from_micros(to_micros(payload["cost"])),
        "currency": payload["currency"],
        "position": f"ad-served[{decision.partition}]@{decision.offset}",
    }
    got = {
        "campaign_id": charge.campaign_id,
        "timestamp": charge.timestamp,
        "cost": from_micros(charge.cost_micros),
        "currency": charge.currency,
        "position": f"ad-served[{charge.partition}]@{charge.offset}",
    }
    return ", ".join(
        f"{name} {got[name]} in the ledger, {wanted[name]} served"
        for name in wanted
        if wanted[name] != got[name]
    )
