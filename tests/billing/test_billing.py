"""`adstream billing` against a real broker: the ledger equals the served events exactly;
duplicates charged once; aborted transactions invisible; malformed records kept in `rejected`;
a long run stopped by SIGTERM; clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from subprocess import PIPE

import httpx
import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from prometheus_client.parser import text_string_to_metric_families

from infra.process import free_port
from models.codec import encode
from streams.billing import consumer
from streams.billing.ledger import Ledger
from tests.billing.support import (
    BASE_MS,
    DAY_MS,
    ROOT,
    Topic,
    billing_command,
    billing_env,
    charges_in,
    expected_charges,
    ledger_charges,
    ledger_state,
    publish_mixed,
    run_billing,
    served,
)


async def bill(topic: Topic, target: str) -> consumer.Progress:
    """Run the consumer in this process until it has caught up."""
    with Ledger.open(target) as ledger:
        return await consumer.run(
            topic.bootstrap, topic.name, ledger, asyncio.Event(), until_caught_up=True
        )


async def test_the_ledger_equals_the_served_events(topic: Topic, ledger_target: str) -> None:
    expected = await publish_mixed(topic, 600, seed=3)
    ledger = ledger_target
    env = billing_env(topic.bootstrap, topic.prefix)

    first = await run_billing(env, "--ledger", ledger, "--until-caught-up")
    assert first.returncode == 0, first.stderr
    assert ledger_state(ledger) == expected
    charges = len(expected.charges)
    assert f"billing caught up: {charges:,} charges in the ledger ({charges:,} by this run)" in (
        first.stderr
    )

    again = await run_billing(env, "--ledger", ledger, "--until-caught-up")
    assert again.returncode == 0, again.stderr
    assert f"({0} by this run)" in again.stderr
    assert ledger_state(ledger) == expected

    report = await run_billing(env, "report", "--ledger", ledger, "--json")
    assert report.returncode == 0, report.stderr
    totals = msgspec.json.decode(report.stdout)
    by_currency: Counter[str] = Counter()
    for charge in expected.charges:
        by_currency[charge.currency] += charge.cost_micros
    assert {t["currency"]: t["amount_micros"] for t in totals["grand_totals"]} == by_currency
    assert sum(line["charges"] for line in totals["lines"]) == charges
    assert (totals["duplicates"], totals["rejected"]) == (
        len(expected.duplicates),
        len(expected.rejected),
    )


async def test_a_request_id_served_twice_is_charged_once(
    topic: Topic, ledger_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    first, other = served("camp-1"), served("camp-1")
    placed = await topic.publish([first, other, first])
    resent = await topic.publish([first])
    ledger = ledger_target
    with caplog.at_level(logging.WARNING, logger="streams.billing"):
        progress = await bill(topic, ledger)

    assert ledger_charges(ledger) == expected_charges([first, other], placed[:2])
    assert ledger_state(ledger).duplicates == [placed[2], resent[0]]
    assert (progress.charged, progress.duplicates) == (2, 2)
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == first.request_id]
    assert len(logged) == 2
    assert "duplicate AdServed" in logged[0].getMessage()


async def test_aborted_transactions_are_never_charged(topic: Topic, ledger_target: str) -> None:
    kept = [served() for _ in range(5)]
    placed = await topic.publish(kept[:3])
    await topic.publish([served() for _ in range(4)], abort=True)
    placed += await topic.publish(kept[3:])
    await topic.publish([served() for _ in range(4)], abort=True)  # the log ends aborted
    ledger = ledger_target

    progress = await bill(topic, ledger)

    assert progress.caught_up
    assert ledger_charges(ledger) == expected_charges(kept, placed)
    with Ledger.open(ledger, read_only=True) as reopened:
        offsets = reopened.offsets()
    # The ledger's offsets lie past the aborted records and the markers: nothing is re-read.
    again = await bill(topic, ledger)
    assert again.charged == 0
    with Ledger.open(ledger, read_only=True) as reopened:
        assert reopened.offsets() == offsets


async def test_malformed_records_are_kept_and_billing_goes_on(
    topic: Topic, ledger_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = [served(), served(cost="1.000001")]
    valid = msgspec.json.decode(encode(served()))
    bad: list[bytes | None] = [
        b"\x00\x01 not json",
        None,  # a tombstone
        msgspec.json.encode({**valid, "schema": 2}),
        msgspec.json.encode({**valid, "cost": "1e3"}),
        msgspec.json.encode({**valid, "cost": 0.5}),
        msgspec.json.encode({**valid, "cost": "0.0000001"}),
        msgspec.json.encode({**valid, "currency": "usd"}),
        msgspec.json.encode({**valid, "timestamp": BASE_MS // 1000}),
        msgspec.json.encode({key: value for key, value in valid.items() if key != "request_id"}),
    ]
    records = [(b"k", value, BASE_MS) for value in bad]
    placed_bad = await topic.publish_raw([*records[:4], (b"k", encode(good[0]), BASE_MS)])
    placed_bad += await topic.publish_raw(records[4:])
    placed_good = [placed_bad.pop(4)]
    placed_good += await topic.publish(good[1:])
    ledger = ledger_target
    with caplog.at_level(logging.WARNING, logger="streams.billing"):
        progress = await bill(topic, ledger)

    assert ledger_charges(ledger) == expected_charges(good, placed_good)
    assert progress.rejected == len(bad)
    with Ledger.open(ledger, read_only=True) as reopened:
        rejected = list(reopened.rejected())
    assert [(r.partition, r.offset) for r in rejected] == sorted(placed_bad)
    by_offset = {r.offset: r for r in rejected}
    assert [by_offset[offset].value for _, offset in placed_bad] == bad
    assert [by_offset[offset].key for _, offset in placed_bad] == [b"k"] * len(bad)
    errors = [by_offset[offset].error for _, offset in placed_bad]
    assert "malformed" in errors[0]
    assert "tombstone" in errors[1]
    assert "schema 2" in errors[2]
    assert [error.split(" ")[0] for error in errors[3:6]] == ["cost:", "not", "cost:"]
    assert "$.cost" in errors[4]  # a float, not a decimal string
    assert "currency" in errors[6]
    assert "timestamp" in errors[7]
    assert "request_id" in errors[8]
    partition, offset = placed_bad[0]
    assert any(
        f"rejected {topic.name}[{partition}]@{offset}" in r.getMessage() for r in caplog.records
    )


async def test_runs_until_sigterm_billing_what_arrives(topic: Topic, ledger_target: str) -> None:
    ledger = ledger_target
    process = await asyncio.create_subprocess_exec(
        *billing_command("--ledger", ledger),
        env=billing_env(topic.bootstrap, topic.prefix),
        cwd=ROOT,
        stderr=PIPE,
    )
    events = [served(at_ms=BASE_MS + i * DAY_MS // 10) for i in range(40)]
    placed = []
    for start in range(0, len(events), 10):
        placed += await topic.publish(events[start : start + 10])
        deadline = time.monotonic() + 20
        while charges_in(ledger) < start + 10:
            assert process.returncode is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 20)

    assert process.returncode == 0, stderr.decode()
    assert "billing stopped: 40 charges in the ledger (40 by this run)" in stderr.decode()
    assert ledger_charges(ledger) == expected_charges(events, placed)


def billing_gauges(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("adstream_billing_")
    }


async def test_metrics_show_the_charges_and_the_lag(topic: Topic, tmp_path: Path) -> None:
    """`--metrics-port`: a scraper sees billing catch up (lag 0 once all 30 are charged)."""
    port = free_port()
    env = {**billing_env(topic.bootstrap, topic.prefix), "ADSTREAM_WEB_BIND": "127.0.0.1"}
    process = await asyncio.create_subprocess_exec(
        *billing_command("--ledger", str(tmp_path / "ledger.db"), "--metrics-port", str(port)),
        env=env,
        cwd=ROOT,
        stderr=PIPE,
    )
    await topic.publish([served(at_ms=BASE_MS + i) for i in range(30)])
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2.0) as client:
        while (
            seen.get("adstream_billing_charges") != 30
            or seen.get("adstream_billing_lag_records") != 0
        ):
            assert process.returncode is None and time.monotonic() < deadline, seen
            with contextlib.suppress(httpx.HTTPError):  # until it listens
                seen = billing_gauges((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
            await asyncio.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert seen["adstream_billing_duplicates"] == seen["adstream_billing_rejected"] == 0


async def test_clear_errors(topic: Topic, tmp_path: Path) -> None:
    env = billing_env(topic.bootstrap, topic.prefix)
    newer = tmp_path / "newer.db"
    Ledger.open(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    ledger = str(tmp_path / "ledger.db")
    unreachable = {**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    wrong_prefix = {**env, "ADSTREAM_TOPIC_PREFIX": "nobody-"}

    started = time.monotonic()
    no_broker, no_topic, no_dir, other_version, no_ledger, usage = await asyncio.gather(
        run_billing(unreachable, "--ledger", ledger, "--until-caught-up", "--connect-timeout", "2"),
        run_billing(wrong_prefix, "--ledger", str(tmp_path / "typo.db"), "--until-caught-up"),
        run_billing(env, "--ledger", str(tmp_path / "missing" / "ledger.db")),
        run_billing(env, "--ledger", str(newer), "--until-caught-up"),
        run_billing(env, "report", "--ledger", str(tmp_path / "none.db")),
        run_billing(env),
    )

    assert no_broker.returncode == 1
    assert "Error: cannot reach Kafka at 127.0.0.1:" in no_broker.stderr
    assert "within 2 s" in no_broker.stderr
    assert time.monotonic() - started < 20
    assert no_topic.returncode == 1
    assert "Error: topic nobody-ad-served does not exist" in no_topic.stderr
    assert no_dir.returncode == 1
    assert "Error: cannot open the ledger" in no_dir.stderr
    assert other_version.returncode == 1
    assert "has schema version 99; this adstream reads version 1 only" in other_version.stderr
    assert no_ledger.returncode == 1
    assert "Error: no ledger at" in no_ledger.stderr
    assert usage.returncode == 2
    assert "--ledger LEDGER is required" in usage.stderr
    # A failed start bound the ledger to no topic: the right prefix can still use it.
    with Ledger.open(tmp_path / "typo.db", read_only=True) as typo:
        assert typo.topic is None


async def test_records_gone_from_the_log_stop_billing(topic: Topic, ledger_target: str) -> None:
    ledger = ledger_target
    first = await topic.publish([served("camp-1") for _ in range(3)])
    await bill(topic, ledger)
    later = await topic.publish([served("camp-1") for _ in range(3)])
    (partition, _), (_, after_first) = first[0], later[1]
    admin = AIOKafkaAdminClient(bootstrap_servers=topic.bootstrap)
    await admin.start()
    try:  # retention took the first unbilled record
        await admin.delete_records(
            {TopicPartition(topic.name, partition): RecordsToDelete(after_first)}
        )
    finally:
        await admin.close()

    with Ledger.open(ledger, read_only=True) as billed:
        next_offset = billed.offsets()[partition]  # past the transaction's marker
    with pytest.raises(consumer.BillingError, match=f"{partition}@{next_offset}, .* no longer"):
        await bill(topic, ledger)
    assert len(ledger_charges(ledger)) == 3
