"""`adstream publish`: JSON lines from a file or stdin (bad lines reported, the rest sent) and
synthetic load, read back from the real broker."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from models.codec import decode_request, encode
from streams.admin import ensure_topics
from streams.topics import Topics
from tests.cli import read_topic, run_adstream
from tests.pipeline.harness import BASE_MS, request


def publish(
    args: list[str], kafka_bootstrap: str, prefix: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return run_adstream(
        ["publish", *args], kafka_bootstrap=kafka_bootstrap, prefix=prefix, stdin=stdin
    )


async def published(kafka_bootstrap: str, topic: str, count: int) -> list[tuple[bytes, int]]:
    """The (key, timestamp) of the first `count` records of `topic`, each a valid request."""
    records = await read_topic(kafka_bootstrap, topic, count)
    for record in records:
        decode_request(record.value)
    return [(record.key, record.timestamp) for record in records]


async def test_stdin_lines_are_checked_and_the_good_ones_sent(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topics = Topics.named(f"{unique_name}-")
    await ensure_topics(kafka_bootstrap, topics, partitions=1)
    good = [request("c1", BASE_MS + i, f"user-{i}") for i in range(3)]
    lines = [encode(good[0]).decode(), "{not json", encode(good[1]).decode(), "", '{"schema": 9}']
    lines.append(encode(good[2]).decode())

    run = publish(["-"], kafka_bootstrap, f"{unique_name}-", "\n".join(lines) + "\n")

    assert run.returncode == 1, run.stderr
    assert "line 2: not sent: undecodable" in run.stderr
    assert "line 5: not sent: schema_version" in run.stderr
    assert "3 requests published" in run.stderr and "2 lines rejected" in run.stderr
    records = await published(kafka_bootstrap, topics.requests, 3)
    assert records == [(f"user-{i}".encode(), BASE_MS + i) for i in range(3)]


async def test_synthetic_load_at_a_rate(kafka_bootstrap: str, unique_name: str) -> None:
    topics = Topics.named(f"{unique_name}-")
    await ensure_topics(kafka_bootstrap, topics, partitions=2)
    started = time.monotonic()
    args = ["--synthetic", "200", "--users", "7", "--campaign", "a", "--campaign", "b"]
    run = publish([*args, "--rate", "400"], kafka_bootstrap, f"{unique_name}-")
    assert run.returncode == 0, run.stderr
    assert "200 requests published" in run.stderr
    assert time.monotonic() - started >= 0.5  # 200 at 400/s
    records = await published(kafka_bootstrap, topics.requests, 200)
    assert len(records) == 200
    assert {key for key, _ in records} <= {f"user-{i}".encode() for i in range(1, 8)}


def test_usage_errors(kafka_bootstrap: str, unique_name: str) -> None:
    both = publish(["-", "--synthetic", "3"], kafka_bootstrap, unique_name)
    assert both.returncode == 2 and "either SOURCE" in both.stderr
    no_campaign = publish(["--synthetic", "3"], kafka_bootstrap, unique_name)
    assert no_campaign.returncode == 2 and "--campaign" in no_campaign.stderr


async def test_a_line_that_is_not_utf8_is_reported_and_the_rest_sent(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    topics = Topics.named(f"{unique_name}-")
    await ensure_topics(kafka_bootstrap, topics, partitions=1)
    good = [request("c1", BASE_MS + i, f"user-{i}") for i in range(4)]
    # Byte 0xFF inside a JSON string, then outside any.
    bad_in_string = encode(request("c1-", BASE_MS, "x")).replace(b"c1-", b"c1\xff")
    lines = [encode(good[0]), bad_in_string, encode(good[1]), b"\xfe\xff{", encode(good[2])]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\n".join([*lines, encode(good[3])]) + b"\n")

    run = publish([str(path)], kafka_bootstrap, f"{unique_name}-")

    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "line 2: not sent: undecodable" in run.stderr
    assert "line 4: not sent: undecodable" in run.stderr
    assert "4 requests published" in run.stderr and "2 lines rejected" in run.stderr
    records = await published(kafka_bootstrap, topics.requests, 4)
    assert records == [(f"user-{i}".encode(), BASE_MS + i) for i in range(4)]
