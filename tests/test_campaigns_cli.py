"""`adstream campaigns load`: JSON and TOML files, validated whole before anything is sent;
`campaigns list|show`: the rules in force and their spend, from the real topics."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import msgspec

from streams.topics import Topics
from tests.audit.kafka import HistoryWriter
from tests.audit.support import served
from tests.cli import read_topic, run_adstream
from tests.pipeline.harness import BASE_MS, DAY_MS, campaign, request

CAMPAIGN = {
    "schema": 1,
    "campaign_id": "json-1",
    "active": True,
    "vast_url": "https://ads.example.com/vast?cb=[CACHEBUSTING]",
    "cpm": "2.505",
    "currency": "EUR",
    "budget": {"lifetime": "100.00", "daily": "10"},
    "frequency_caps": [{"max": 3, "window_s": 3600}],
}
TOML = """
[[campaigns]]
schema = 1
campaign_id = "toml-1"
active = false
vast_url = "http://127.0.0.1/vast"
cpm = "1"
currency = "USD"
anonymous_policy = "uncapped"
"""


def load(path: Path, kafka_bootstrap: str, prefix: str) -> subprocess.CompletedProcess[str]:
    args = ["campaigns", "load", str(path)]
    env = {"ADSTREAM_PARTITIONS": "1"}
    return run_adstream(args, kafka_bootstrap=kafka_bootstrap, prefix=prefix, env=env)


async def published(kafka_bootstrap: str, topic: str, expect: int) -> list[dict[str, object]]:
    records = await read_topic(kafka_bootstrap, topic, expect, timeout_s=10)
    return [msgspec.json.decode(r.value or b"") for r in records]


async def test_json_and_toml_files_are_published(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    as_json = tmp_path / "campaigns.json"
    as_json.write_text(json.dumps([CAMPAIGN]))
    as_toml = tmp_path / "campaigns.toml"
    as_toml.write_text(TOML)
    first = load(as_json, kafka_bootstrap, prefix)
    second = load(as_toml, kafka_bootstrap, prefix)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert first.stdout.split() == ["json-1", "version", "0"]
    assert second.stdout.split() == ["toml-1", "version", "1"]
    values = await published(kafka_bootstrap, Topics.named(prefix).campaigns, 2)
    assert [v["campaign_id"] for v in values] == ["json-1", "toml-1"]
    assert values[0]["cpm"] == "2.505"  # money stays a decimal string
    assert values[1]["anonymous_policy"] == "uncapped"


async def test_a_bad_file_publishes_nothing_and_names_each_problem(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    bad = [
        CAMPAIGN,
        {**CAMPAIGN, "campaign_id": "four-places", "cpm": "2.5005"},
        {**CAMPAIGN, "campaign_id": "no-url", "vast_url": "ftp://x"},
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = load(path, kafka_bootstrap, prefix)
    assert result.returncode == 1
    assert "none published" in result.stderr
    assert "#1 (four-places)" in result.stderr and "3 decimal places" in result.stderr
    assert "#2 (no-url)" in result.stderr
    assert await published(kafka_bootstrap, Topics.named(prefix).campaigns, 1) == []
    unreadable = tmp_path / "broken.json"
    unreadable.write_text("{not json")
    result = load(unreadable, kafka_bootstrap, prefix)
    assert result.returncode == 1
    assert "cannot read a list of campaigns" in result.stderr


async def test_values_state_cannot_hold_and_unknown_fields_are_refused_by_name(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    entries = [
        {**CAMPAIGN, "campaign_id": "huge", "budget": {"lifetime": "999999999999999.00"}},
        {**{k: v for k, v in CAMPAIGN.items() if k != "budget"}, "bugdet": {"lifetime": "1"}},
        {**CAMPAIGN, "campaign_id": "nested", "budget": {"lifetme": "1"}},
        {**CAMPAIGN, "campaign_id": "caps", "frequency_caps": [{"max": 1, "windows": 60}]},
    ]
    path = tmp_path / "typos.json"
    path.write_text(json.dumps(entries))
    result = load(path, kafka_bootstrap, prefix)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any("#0 (huge)" in line and "budget.lifetime" in line for line in lines)
    assert any("#1 (json-1)" in line and "did you mean 'budget'?" in line for line in lines)
    assert any("#2 (nested)" in line and "'lifetme' in budget" in line for line in lines)
    assert any("#3 (caps)" in line and "did you mean 'window_s'?" in line for line in lines)
    assert await published(kafka_bootstrap, Topics.named(prefix).campaigns, 1) == []


async def test_the_same_campaign_id_twice_in_a_file_publishes_nothing(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    path = tmp_path / "twice.json"
    path.write_text(json.dumps([CAMPAIGN, {**CAMPAIGN, "cpm": "9"}]))
    result = load(path, kafka_bootstrap, prefix)
    assert result.returncode == 1
    assert "#1 (json-1): the same campaign_id as #0" in result.stderr
    toml = tmp_path / "twice.toml"
    toml.write_text(TOML + TOML.replace("active = false", "active = true"))
    result = load(toml, kafka_bootstrap, prefix)
    assert result.returncode == 1
    assert "#1 (toml-1): the same campaign_id as #0" in result.stderr
    assert await published(kafka_bootstrap, Topics.named(prefix).campaigns, 1) == []


async def test_unreadable_files_name_what_is_wrong(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes(json.dumps([CAMPAIGN]).encode().replace(b"json-1", b"json-\xff"))
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text(TOML + TOML.replace("[[campaigns]]", "[[campaings]]"))
    duplicate_key = tmp_path / "duplicate.toml"
    duplicate_key.write_text(TOML.replace('cpm = "1"', 'cpm = "1"\ncpm = "2"'))
    for path, problem in [
        (not_utf8, "can't decode byte 0xff"),
        (misspelt, "unknown key 'campaings' (did you mean 'campaigns'?)"),
        (duplicate_key, "Cannot overwrite a value (at line 8"),
    ]:
        result = load(path, kafka_bootstrap, prefix)
        assert result.returncode == 1, path
        assert "cannot read a list of campaigns" in result.stderr and problem in result.stderr
        assert "Traceback" not in result.stderr
    assert await published(kafka_bootstrap, Topics.named(prefix).campaigns, 1) == []


async def test_list_and_show_the_rules_in_force_and_their_spend(
    kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    topics = Topics.named(prefix)
    now_ms = time.time_ns() // 1_000_000
    today_ms = max(now_ms - 60_000, now_ms // DAY_MS * DAY_MS)
    first_a = campaign("http://127.0.0.1/a", campaign_id="a", lifetime="1.00", daily="0.50")
    async with HistoryWriter(kafka_bootstrap, topics) as writer:
        (rules_a,) = await writer.campaigns(first_a)
        b_rules, _ = await writer.campaigns(
            campaign("http://127.0.0.1/b", campaign_id="b", caps=[(3, 3600)]),
            campaign("http://127.0.0.1/c", campaign_id="c"),
        )
        async with writer.producer.transaction():
            await writer.producer.send(topics.campaigns, None, key=b"c")  # deleted
            await writer.producer.send(topics.campaigns, b'{"schema": 1}', key=b"b")  # invalid
        (rules_a,) = await writer.campaigns(msgspec.structs.replace(first_a, cpm="3.00"))
        old = [request("a", BASE_MS + i, f"user-{i}") for i in range(2)]
        new = [request("a", today_ms + i, f"user-{i}") for i in range(3)]
        await writer.write(decisions=[served(r, rules_a, cost="0.0025") for r in old + new])
        await writer.write(decisions=[served(request("a", today_ms, "x"), rules_a)], abort=True)

    def adstream(*args: str) -> subprocess.CompletedProcess[str]:
        return run_adstream(["campaigns", *args], kafka_bootstrap=kafka_bootstrap, prefix=prefix)

    listed = await asyncio.to_thread(adstream, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert [c["campaign_id"] for c in report["campaigns"]] == ["a", "b"]
    a, b = report["campaigns"]
    assert a["version"] == rules_a.version and a["config"]["cpm"] == "3.00"
    assert b["version"] == b_rules.version and b["config"]["frequency_caps"] == [
        {"max": 3, "window_s": 3600}
    ]
    day = time.strftime("%Y-%m-%d", time.gmtime(today_ms / 1000))
    assert a["spend"] == {
        "currency": "USD",
        "served": 5,
        "lifetime": {"budget": "1.00", "spent": "0.0125", "remaining": "0.9875"},
        "today": {"budget": "0.50", "spent": "0.0075", "remaining": "0.4925"},
        "day": day,
    }
    assert b["spend"]["lifetime"] == {"budget": None, "spent": "0.00", "remaining": None}

    table = await asyncio.to_thread(adstream, "list")
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[1][:8] == [
        "a",
        "active",
        str(rules_a.version),
        "USD",
        "3.00",
        "5",
        "0.0125",
        "1.00",
    ]
    assert rows[1][8:] == ["0.0075", "0.50"]
    shown = await asyncio.to_thread(adstream, "show", "a")
    assert shown.returncode == 0, shown.stderr
    assert "spent lifetime 0.0125 USD of 1.00, 0.9875 left" in shown.stdout
    assert f"spent today {day} 0.0075 USD of 0.50, 0.4925 left" in shown.stdout
    deleted = await asyncio.to_thread(adstream, "show", "c", "--json")
    assert deleted.returncode == 1
    assert json.loads(deleted.stdout) == {"ok": False, "error": "no campaign 'c' in force"}
