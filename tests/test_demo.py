"""`adstream demo`: its stream generator, its upstream and its summary on their own, then the
whole command end to end at a small size against the session's broker and Redis."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from infra.provision import Services
from models.codec import InvalidEvent, decode_request, encode
from models.context import user_id_of, user_key
from models.events import Campaign
from streams.admin import read_campaigns
from streams.audit.findings import Record
from streams.audit.leases import LeaseHistory
from streams.decision_reader import Decision
from streams.demo.run import CAMPAIGNS
from streams.demo.summary import Expected, LeaseRow, render, summarize
from streams.demo.traffic import HOUR_MS, UNKNOWN_CAMPAIGN, TrafficPlan, generate
from streams.demo.upstream import DEFAULT_ORIGIN, DemoUpstream, load_documents, rebase
from streams.invariants import cap_peaks
from streams.state.leases import (
    LeaseAsk,
    LeaseEvent,
    LeaseGrant,
    LeaseReturn,
    to_record,
)
from tests.png import png_dimensions

NOW_MS = 1_795_000_000_000
PLAN = TrafficPlan(end_ms=NOW_MS, requests=5000, users=300, hours=6.0, seed=7)


@pytest.fixture(scope="module")
def campaigns() -> list[Campaign]:
    return read_campaigns(CAMPAIGNS)


# The stream.


def test_traffic_counts_match_the_plan(campaigns: list[Campaign]) -> None:
    traffic = generate(PLAN, campaigns)
    kinds = Counter(message.kind for message in traffic.messages)
    assert len(traffic.messages) == PLAN.requests
    assert kinds == {"request": 4890, "duplicate": 100, "malformed": 10}
    assert len(traffic.request_ids) == kinds["request"]  # distinct


def test_traffic_shares_anonymous_unknown_and_skewed_users(campaigns: list[Campaign]) -> None:
    requests = [
        decode_request(m.record.value)
        for m in generate(PLAN, campaigns).messages
        if m.kind == "request"
    ]
    anonymous = sum(1 for r in requests if user_id_of(r.context) is None)
    assert 0.08 < anonymous / len(requests) < 0.12
    unknown = sum(1 for r in requests if r.campaign_id == UNKNOWN_CAMPAIGN)
    assert 0.005 < unknown / len(requests) < 0.02
    per_user = Counter(user_id_of(r.context) for r in requests if user_id_of(r.context))
    assert len(per_user) > 250
    heaviest, *_, lightest = sorted(per_user.values(), reverse=True)
    assert heaviest > 100 * lightest  # a few heavy users, who will meet their caps
    paused = sum(1 for r in requests if r.campaign_id == "winter-sale")
    assert 0 < paused < len(requests) / 20


def test_requests_are_keyed_by_user_and_stamped_with_increasing_past_event_times(
    campaigns: list[Campaign],
) -> None:
    originals = [m for m in generate(PLAN, campaigns).messages if m.kind == "request"]
    times = []
    for message in originals:
        request = decode_request(message.record.value)
        assert message.record.key == user_key(request.context).encode()
        assert message.record.timestamp_ms == request.context.timestamp
        assert message.request_id == request.context.request_id
        times.append(request.context.timestamp)
    assert times == sorted(times)
    assert PLAN.start_ms <= times[0]
    assert times[-1] < NOW_MS
    assert times[-1] - times[0] > 5 * HOUR_MS  # spread over the whole window


def test_duplicates_resend_an_earlier_request_byte_for_byte(campaigns: list[Campaign]) -> None:
    messages = generate(PLAN, campaigns).messages
    first_seen: dict[bytes, int] = {}
    for position, message in enumerate(messages):
        if message.kind == "request":
            first_seen[message.record.value] = position
        elif message.kind == "duplicate":
            original = first_seen[message.record.value]  # KeyError: no earlier original
            assert messages[original].record == message.record
            assert position - original <= 2 * 20 + 10


def test_malformed_messages_fail_decoding_with_the_reason_they_announce(
    campaigns: list[Campaign],
) -> None:
    malformed = [m for m in generate(PLAN, campaigns).messages if m.kind == "malformed"]
    reasons = []
    for message in malformed:
        with pytest.raises(InvalidEvent) as caught:
            decode_request(message.record.value)
        assert caught.value.reason == message.dead_letter_reason
        reasons.append(caught.value.reason)
    assert set(reasons) == {"undecodable", "invalid", "schema_version"}


def test_the_stream_is_seeded(campaigns: list[Campaign]) -> None:
    small = msgspec.structs.replace(PLAN, requests=300, users=30)
    assert generate(small, campaigns) == generate(small, campaigns)
    reseeded = msgspec.structs.replace(small, seed=8)
    assert generate(reseeded, campaigns).messages != generate(small, campaigns).messages


def test_a_plan_with_no_room_for_valid_requests_is_refused(campaigns: list[Campaign]) -> None:
    with pytest.raises(ValueError):
        generate(msgspec.structs.replace(PLAN, requests=4), campaigns)


# The sample campaigns and the upstream.


def test_sample_campaigns_cover_what_the_demo_shows(campaigns: list[Campaign]) -> None:
    assert len({c.cpm for c in campaigns}) == len(campaigns)
    assert any(len(c.frequency_caps) == 2 for c in campaigns)
    assert [c.active for c in campaigns].count(False) == 1
    assert any(c.anonymous_policy == "uncapped" and c.frequency_caps for c in campaigns)
    assert all(c.vast_url.startswith(DEFAULT_ORIGIN) for c in campaigns)


def test_rebase_moves_only_tags_on_the_default_upstream(campaigns: list[Campaign]) -> None:
    moved = rebase(campaigns[0], "http://127.0.0.1:1234")
    assert moved.vast_url.startswith("http://127.0.0.1:1234/vast/")
    assert moved.vast_url.removeprefix("http://127.0.0.1:1234") == campaigns[
        0
    ].vast_url.removeprefix(DEFAULT_ORIGIN)
    elsewhere = msgspec.structs.replace(campaigns[0], vast_url="https://ads.example/tag")
    assert rebase(elsewhere, "http://127.0.0.1:1234") == elsewhere


def test_own_documents_point_their_pixels_at_the_upstream(tmp_path: Path) -> None:
    documents = load_documents("http://127.0.0.1:1234", samples=tmp_path / "absent")
    assert set(documents) == {"inline.xml", "wrapper.xml", "no-ad.xml"}
    for document in documents.values():
        assert b"http://127.0.0.1:1234/pixel/" in document
        assert DEFAULT_ORIGIN.encode() not in document


async def test_upstream_answers_shares_fixed_by_the_correlator() -> None:
    upstream = DemoUpstream(samples=None)
    await upstream.start(port=0)
    try:
        async with httpx.AsyncClient() as client:

            async def status(correlator: str) -> tuple[int, bool]:
                response = await client.get(
                    upstream.url("inline.xml"),
                    params={"no_fill": "0.3", "fail": "0.1", "correlator": correlator},
                )
                return response.status_code, b"<InLine>" in response.content

            first = [await status(f"c-{i}") for i in range(400)]
            again = [await status(f"c-{i}") for i in range(400)]
    finally:
        await upstream.stop()
    assert first == again  # a retry gets the same answer
    outcomes = Counter(first)
    assert 20 < outcomes[(503, False)] < 60
    assert 80 < outcomes[(200, False)] < 160  # no ad
    assert outcomes[(200, True)] > 200
    assert upstream.answers["503"] + upstream.answers["no_ad"] + upstream.answers["ad"] == 800


# The summary.

HOUR = 3_600_000
T0 = NOW_MS - 5 * HOUR


def served(
    request_id: str, campaign: str, user: str | None, at: int, cost: str, version: int = 0
) -> Decision:
    payload: dict[str, Any] = {
        "request_id": request_id,
        "campaign_id": campaign,
        "user_id": user,
        "timestamp": at,
        "cost": cost,
        "currency": "USD",
        "campaign_version": version,
    }
    return Decision("served", payload, 0)


def denied(request_id: str, campaign: str, reason: str, detail: str | None = None) -> Decision:
    payload: dict[str, Any] = {
        "request_id": request_id,
        "campaign_id": campaign,
        "user_id": "u-1",
        "timestamp": T0,
        "reason": reason,
        "detail": detail,
        "campaign_version": None if reason == "campaign_unknown" else 0,
    }
    return Decision("denied", payload, 0)


def dead_letter(error: str) -> Decision:
    return Decision("dlq", {"error": error}, 0)


def capped_campaign(**overrides: Any) -> Campaign:
    spec = {
        "schema": 1,
        "campaign_id": "c1",
        "active": True,
        "vast_url": "http://127.0.0.1:6070/vast/inline.xml",
        "cpm": "2.505",
        "currency": "USD",
        "budget": {"lifetime": "0.01002", "daily": None},
        "frequency_caps": [{"max": 2, "window_s": 3600}],
        **overrides,
    }
    return msgspec.convert(spec, Campaign)


def test_summary_of_decisions_that_kept_every_rule() -> None:
    decisions = {
        d.payload["request_id"]: d
        for d in [
            served("r1", "c1", "u-1", T0, "0.002505"),
            served("r2", "c1", "u-1", T0 + 10 * 60_000, "0.002505"),
            denied("r3", "c1", "frequency_cap", "2/3600s"),
            served("r4", "c1", "u-1", T0 + HOUR + 1, "0.002505"),  # r1 has left the window
            served("r5", "c1", None, T0 + HOUR + 2, "0.002505"),  # anonymous: nobody's cap
            denied("r6", "c1", "budget_exhausted", "lifetime"),
            denied("r7", "gone", "campaign_unknown"),
        ]
    }
    expected = Expected(frozenset(decisions), resent=3, malformed=2, versions={"c1": 0})
    letters = [dead_letter("undecodable: truncated"), dead_letter("invalid: bad campaign_id")]

    summary = summarize(expected, decisions, [], letters, [capped_campaign()], {"c1": 10_020})

    assert summary.ok, summary.violations
    assert (summary.requests, summary.served) == (7, 4)
    assert summary.denied == {"frequency_cap": 1, "budget_exhausted": 1, "campaign_unknown": 1}
    assert summary.dead_letters == {"invalid": 1, "undecodable": 1}
    (row,) = summary.spend
    assert (row.served, row.spent, row.lifetime, row.tables) == (4, 10_020, 10_020, 10_020)
    (cap,) = summary.caps
    assert (cap.peak, cap.user_id, cap.denied) == (2, "u-1", 1)
    text = render(summary)
    assert "invariants held" in text
    assert "0.01002" in text  # exact: 4 x 0.002505
    # What --plot draws: the same numbers, over event time.
    timeline = summary.timeline
    assert timeline.start_ms == T0 // 60_000 * 60_000
    totals = {outcome: sum(counts) for outcome, counts in timeline.decisions.items()}
    assert totals == {"served": summary.served, **summary.denied}
    (series,) = timeline.spend
    assert (series.campaign_id, series.spent[-1], series.lifetime) == ("c1", row.spent, 10_020)
    assert series.spent[10] == 2 * 2_505  # r2 at T0 + 10 min
    assert [(bar.peak, bar.max, bar.user_id) for bar in timeline.caps] == [(2, 2, "u-1")]


def test_summary_reports_a_cap_exceeded() -> None:
    decisions = {
        d.payload["request_id"]: d
        for d in [
            served("r1", "c1", "u-1", T0, "0.002505"),
            served("r2", "c1", "u-1", T0 + 20 * 60_000, "0.002505"),
            served("r3", "c1", "u-1", T0 + 40 * 60_000, "0.002505"),  # a third within 1 h
        ]
    }
    expected = Expected(frozenset(decisions), resent=0, malformed=0, versions={"c1": 0})

    summary = summarize(expected, decisions, [], [], [capped_campaign()])

    assert not summary.ok
    assert summary.violations == ["u-1/c1: 3 > 2 in 3600s"]
    (cap,) = summary.caps
    assert (cap.peak, cap.user_id) == (3, "u-1")
    text = render(summary)
    assert "3/2" in text and "EXCEEDED" in text and "INVARIANTS BROKEN" in text


def test_summary_reports_missing_duplicate_stale_and_lost_decisions_and_budgets() -> None:
    first = served("r1", "c1", "u-1", T0, "0.002505")
    again = served("r1", "c1", "u-1", T0, "0.002505")
    over = [served(f"b{i}", "c1", f"u-{i}", T0 + i, "0.002505") for i in range(2, 6)]
    early = served("b6", "c1", "u-6", T0 + 6, "0.002505", version=7)
    decisions = {d.payload["request_id"]: d for d in [first, *over, early]}
    ids = frozenset([*decisions, "r-missing"])
    expected = Expected(ids, resent=1, malformed=1, versions={"c1": 0})

    summary = summarize(expected, decisions, [again], [], [capped_campaign()], {"c1": 1})

    assert summary.duplicates == 1
    assert summary.violations == [
        "1 of 7 requests got no decision",
        "1 extra decisions for requests already decided",
        "0 dead letters for 1 malformed messages",
        "1 decisions applied another version of their campaign than loaded",
        "c1: lifetime 15030 > 0.01002",
        "c1: the worker's tables hold 0.000001 spent, the served events 0.01503",
    ]


def lease_history(*events: LeaseEvent) -> LeaseHistory:
    """`budget-leases` holding these events: asks and returns on partition 0, the bank's."""
    history = LeaseHistory()
    offsets: Counter[int] = Counter()
    for event in events:
        partition = 0 if isinstance(event, LeaseAsk | LeaseReturn) else event.partition
        record = encode(to_record(event))
        history.add(Record(partition, offsets[partition], T0, b"c1", record))
        offsets[partition] += 1
    return history


def test_summary_shows_each_campaigns_leases_per_partition() -> None:
    # c1: four impressions of 0.002505. Partition 0 is granted two and spends them;
    # partition 1 is granted two, spends one and gives one back.
    cost, limit = 2_505, 10_020

    def grant(partition: int, amount: int) -> LeaseGrant:
        return LeaseGrant("c1", partition, 1, None, amount, amount, 0, limit, None, 1, None)

    leases = lease_history(
        LeaseAsk("c1", 0, 1, None, 2 * cost, 0, T0),
        grant(0, 2 * cost),
        LeaseAsk("c1", 1, 1, None, 2 * cost, 0, T0),
        grant(1, 2 * cost),
        LeaseReturn("c1", 1, 2, None, cost, cost, cost, T0 + 2),
    )
    decisions = {
        d.payload["request_id"]: d
        for d in [
            served("r1", "c1", "u-1", T0, "0.002505"),
            served("r2", "c1", "u-2", T0 + 1, "0.002505"),
            served("r3", "c1", "u-3", T0 + 2, "0.002505"),
        ]
    }
    placement = {"r1": (0, 0), "r2": (0, 1), "r3": (1, 2)}
    expected = Expected(frozenset(decisions), 0, 0, {"c1": 0}, placement)

    summary = summarize(expected, decisions, [], [], [capped_campaign()], leases=leases)

    assert summary.ok, summary.violations
    assert [(r.partition, r.granted, r.returned, r.spent, r.remaining) for r in summary.leases] == [
        (0, 2 * cost, 0, 2 * cost, 0),
        (1, 2 * cost, cost, cost, 0),
    ]
    text = render(summary)
    assert "budget leases per deciding partition" in text
    rows = [line.split() for line in text.splitlines()]
    assert ["c1", "1", "0.00501", "0.002505", "0.002505", "0.00"] in rows

    # A serve on a partition that holds no lease is one beyond it.
    decisions["r4"] = served("r4", "c1", "u-4", T0 + 3, "0.002505")
    expected = Expected(frozenset(decisions), 0, 0, {"c1": 0}, placement | {"r4": (2, 3)})
    summary = summarize(expected, decisions, [], [], [capped_campaign()], leases=leases)
    assert summary.leases[-1] == LeaseRow("c1", 2, 0, 0, cost)
    assert summary.leases[-1].remaining == -cost
    assert summary.violations == [
        "c1 on partition 2 (lifetime): served 0.002505, but granted 0.00 and returned 0.00"
    ]


def test_cap_peaks_match_brute_force() -> None:
    rng = random.Random(3)
    campaign = capped_campaign(frequency_caps=[{"max": 2, "window_s": 60}])
    times = sorted(rng.randrange(0, 600_000) for _ in range(200))
    times += times[:5]  # equal event times count inside one window together
    decisions = [served(f"r{i}", "c1", "u-1", T0 + t, "0.002505") for i, t in enumerate(times)]
    brute = max(sum(1 for u in times if end - 60_000 < u <= end) for end in times)
    (peak,) = cap_peaks(decisions, {"c1": campaign})
    assert peak.count == brute


# End to end.


def test_demo_end_to_end(services: Services, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
        "REDIS_URL": services.redis_url,
    }
    started = time.monotonic()
    # 2 h of event time in 2 s: a live stream sped up (see `streams.demo.run._publish`).
    plot = tmp_path / "demo.png"
    args = [
        "--requests",
        "300",
        "--users",
        "30",
        "--hours",
        "2",
        "--rate",
        "150",
        "--plot",
        str(plot),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "invariants held" in out
    for line in ("  served ", "  denied   frequency_cap", "  denied   anonymous", "  total "):
        assert line in out, out
    assert "dead letters (ad-requests-dlq): 4" in out
    assert "budget leases per deciding partition" in out
    assert "0 decided twice" in out
    assert "what to run next" in out
    assert "healthy" in done.stderr
    assert f"plot: {plot}" in done.stderr
    assert png_dimensions(plot)[0] == 1200
    assert elapsed < 90, elapsed


def test_demo_refuses_a_tiny_stream() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--requests", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--requests" in done.stderr
