"""`adstream tail` against the real broker: decisions written in transactions (one aborted),
read back by the command in its own process, filtered and from a time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time

from models.codec import encode
from models.events import SCHEMA_VERSION, AdDenied, AdServed, DeadLetter
from streams.tail import iso_ms
from streams.topics import Topics
from tests.audit.kafka import HistoryWriter
from tests.audit.support import denied, served
from tests.cli import run_adstream
from tests.pipeline.harness import BASE_MS, campaign, request

HOUR_MS = 3_600_000


async def tail(kafka_bootstrap: str, prefix: str, *args: str) -> list[dict[str, object]]:
    """The JSON lines of `adstream tail --no-follow ARGS`."""
    result = await asyncio.to_thread(
        run_adstream, ["tail", "--no-follow", *args], kafka_bootstrap=kafka_bootstrap, prefix=prefix
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def ids(lines: list[dict[str, object]]) -> list[str]:
    """The request ids of decision lines, sorted."""
    return sorted(str(line["event"]["request_id"]) for line in lines)  # type: ignore[index]


async def test_filters_and_the_start_time_pick_committed_decisions(
    kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    topics = Topics.named(prefix)
    now_ms = time.time_ns() // 1_000_000
    a = request("a", BASE_MS + 1_000, "user-1")
    b = request("a", BASE_MS + 2_000, "user-2")
    c = request("b", BASE_MS + 2 * HOUR_MS, "user-1")
    recent = request("b", now_ms - 60_000, "user-3")
    aborted = request("a", BASE_MS + 3_000, "user-1")
    async with HistoryWriter(kafka_bootstrap, topics) as writer:
        rules_a, rules_b = await writer.campaigns(
            campaign("x", campaign_id="a"), campaign("x", campaign_id="b")
        )
        decisions: list[AdServed | AdDenied] = [
            served(a, rules_a),
            denied(b, "frequency_cap", rules_a.version, "1 per 3600 s"),
            served(c, rules_b),
            denied(recent, "budget_exhausted", rules_b.version, "lifetime"),
        ]
        await writer.write(decisions=decisions)
        await writer.write(decisions=[served(aborted, rules_a)], abort=True)
        letter = DeadLetter(
            SCHEMA_VERSION,
            None,
            base64.b64encode(encode(a)).decode(),
            topics.requests,
            0,
            9,
            "invalid: x",
        )
        async with writer.producer.transaction():
            await writer.producer.send(topics.dlq, encode(letter), timestamp_ms=BASE_MS)

    every = await tail(kafka_bootstrap, prefix)
    assert ids(every) == ids(
        [{"event": {"request_id": r.context.request_id}} for r in (a, b, c, recent)]
    )
    first = next(line for line in every if line["event"]["request_id"] == a.context.request_id)  # type: ignore[index]
    assert first["outcome"] == "served" and first["source"] == "served"
    assert first["time"] == iso_ms(BASE_MS + 1_000)
    assert first["event"]["cost"] == "0.0025"  # type: ignore[index]

    by_campaign = await tail(kafka_bootstrap, prefix, "--campaign", "a")
    assert ids(by_campaign) == sorted([a.context.request_id, b.context.request_id])
    served_to_user_1 = await tail(
        kafka_bootstrap, prefix, "--user", "user-1", "--outcome", "served"
    )
    assert ids(served_to_user_1) == sorted([a.context.request_id, c.context.request_id])
    capped = await tail(kafka_bootstrap, prefix, "--outcome", "frequency_cap")
    assert [line["event"]["detail"] for line in capped] == ["1 per 3600 s"]  # type: ignore[index]
    one = await tail(kafka_bootstrap, prefix, "--request-id", c.context.request_id)
    assert ids(one) == [c.context.request_id]
    assert len(await tail(kafka_bootstrap, prefix, "--limit", "2")) == 2

    since_iso = await tail(kafka_bootstrap, prefix, "--from", iso_ms(BASE_MS + HOUR_MS))
    assert ids(since_iso) == sorted([c.context.request_id, recent.context.request_id])
    since_ago = await tail(kafka_bootstrap, prefix, "--from", "10m")
    assert ids(since_ago) == [recent.context.request_id]

    dead = await tail(kafka_bootstrap, prefix, "--dlq", "--outcome", "dead_letter")
    assert len(dead) == 1 and dead[0]["source"] == "dlq"
    assert dead[0]["event"]["error"] == "invalid: x"  # type: ignore[index]
    # A dead letter is found by the ids its original message carried.
    by_id = await tail(kafka_bootstrap, prefix, "--dlq", "--request-id", a.context.request_id)
    assert sorted(str(line["outcome"]) for line in by_id) == ["dead_letter", "served"]

    table = await asyncio.to_thread(
        run_adstream,
        ["tail", "--no-follow", "--format", "table", "--campaign", "b"],
        kafka_bootstrap=kafka_bootstrap,
        prefix=prefix,
    )
    rows = table.stdout.splitlines()
    assert rows[0].split() == [
        "time",
        "(UTC)",
        "outcome",
        "campaign",
        "user",
        "request_id",
        "detail",
    ]
    assert len(rows) == 3
    assert any(
        row.split()[2:6] == ["budget_exhausted", "b", "user-3", recent.context.request_id]
        for row in rows
    )


async def test_following_shows_each_decision_as_it_is_committed_until_ctrl_c(
    kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    topics = Topics.named(prefix)
    old, new = request("a", BASE_MS, "user-1"), request("a", BASE_MS + 1, "user-2")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ADSTREAM_TOPIC_PREFIX": prefix,
    }
    async with HistoryWriter(kafka_bootstrap, topics) as writer:
        (rules,) = await writer.campaigns(campaign("x", campaign_id="a"))
        await writer.write(decisions=[served(old, rules)])
        # No --from: only what is committed from now on. Its stdout is a pipe, as in `| jq`.
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "streams.cli", "tail"],
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            ready = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert ready.decode().startswith(f"following {topics.served}, {topics.denied};")
            await writer.write(decisions=[denied(new, "no_fill", rules.version, "303")])
            # The line comes while the command still runs: nothing waits in a buffer.
            line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
    assert line["outcome"] == "no_fill"
    assert line["event"]["request_id"] == new.context.request_id
    assert proc.returncode == 0, err
    assert out == b"" and b"Traceback" not in err


def test_a_missing_topic_is_named(kafka_bootstrap: str, unique_name: str) -> None:
    result = run_adstream(
        ["tail", "--no-follow"], kafka_bootstrap=kafka_bootstrap, prefix=f"{unique_name}-"
    )
    assert result.returncode == 1
    assert f"topic {unique_name}-ad-served does not exist" in result.stderr
    assert "Traceback" not in result.stderr
