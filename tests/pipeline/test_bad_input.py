"""Bad input never stops the worker and is never lost: each kind lands in the DLQ, whole,
with its reason, and the worker goes on deciding."""

from __future__ import annotations

import base64
import hashlib

import httpx
import msgspec
import pytest

from models.codec import encode
from tests.pipeline.harness import BASE_MS, DAY_MS, Deployment, campaign, request


async def test_each_kind_of_bad_request_is_dead_lettered(
    deployment: Deployment, ad_url: str
) -> None:
    rules = campaign(ad_url)
    await deployment.load(rules)
    good = request(rules.campaign_id, BASE_MS + 12 * DAY_MS, "dlq-user")
    valid = msgspec.json.decode(encode(good))
    ill_typed = {**valid, "context": {**valid["context"], "timestamp": "yesterday"}}
    missing = {key: value for key, value in valid.items() if key != "campaign_id"}
    future_schema = {**valid, "schema": 2, "context": {"v2": True}}
    far_past = {**valid, "context": {**valid["context"], "timestamp": 86_400_000}}
    huge_cookies = {
        **valid,
        "context": {**valid["context"], "cookies": {"user_id": "x", "big": "y" * 10_000}},
    }
    bad: list[tuple[bytes | None, str]] = [
        (b"\x00\xff not json", "undecodable"),
        (b'{"schema": 1, "context": {"timestamp": 1', "undecodable"),
        (msgspec.json.encode(ill_typed), "invalid"),
        (msgspec.json.encode(missing), "invalid"),
        (msgspec.json.encode(future_schema), "schema_version"),
        (msgspec.json.encode(far_past), "invalid"),
        (msgspec.json.encode(huge_cookies), "invalid"),
        (b"[" * 70_000, "oversize"),
        (None, "undecodable"),
        (encode(good).replace(b'"placement-1"', b'"placement-1\xff"'), "undecodable"),
        (
            encode(good).replace(b'"campaign_id":', b'"campaign_id":"other","campaign_id":'),
            "invalid",
        ),
        (b'{"pad": "' + b"x" * 999_000 + b'"}', "oversize"),
    ]
    before = len(deployment.dead_letters)
    for value, _ in bad:
        await deployment.publish_raw(value, key=b"bad-key")
    # The worker goes on: a good request after all of that is decided.
    (decision,) = await deployment.decided(await deployment.publish(good))
    assert decision.topic == "served"
    letters = (await deployment.dead_lettered(before + len(bad)))[before:]
    assert [letter.payload["error"].split(":")[0] for letter in letters] == [r for _, r in bad]
    for letter, (value, _) in zip(letters, bad, strict=True):
        kept = letter.payload["value"]
        kept_value = None if kept is None else base64.b64decode(kept)
        if value is not None and len(value) > 512 * 1024:
            # Too large to keep whole below the DLQ's record limit: a prefix, size and hash.
            assert kept_value == value[: 512 * 1024]
            assert letter.payload["value_size"] == len(value)
            assert letter.payload["value_sha256"] == hashlib.sha256(value).hexdigest()
            cut = f"value kept as its first 524,288 of {len(value):,} bytes"
            assert cut in letter.payload["error"]
        else:
            assert kept_value == value
            assert letter.payload["value_size"] is None
        assert base64.b64decode(letter.payload["key"]) == b"bad-key"
        assert letter.payload["topic"] == deployment.topics.requests
        assert letter.payload["offset"] >= 0


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"cpm": "2.5005"}, "more than 3 decimal places"),  # not whole micros
        # Micros past what the tables' encoding holds: this one used to stop the worker.
        ({"budget": {"lifetime": "999999999999999.00"}}, "budget.lifetime"),
        ({"budget": None, "bugdet": {"lifetime": "1"}}, "did you mean 'budget'?"),
        ({"frequency_caps": [{"max": 1, "windows": 60}]}, "did you mean 'window_s'?"),
    ],
)
async def test_invalid_campaign_changes_nothing_and_is_dead_lettered(
    deployment: Deployment, ad_url: str, change: dict[str, object], error: str
) -> None:
    rules = campaign(ad_url, cpm="2.50")
    (version,) = await deployment.load(rules)
    before = len(deployment.dead_letters)
    broken = {**msgspec.to_builtins(rules), **change}
    await deployment.producer.send_and_wait(
        deployment.topics.campaigns,
        msgspec.json.encode({key: value for key, value in broken.items() if value is not None}),
        key=rules.campaign_id.encode(),
    )
    letters = await deployment.dead_lettered(before + 1)
    assert error in letters[-1].payload["error"]
    assert letters[-1].payload["error"].startswith("invalid: ")
    assert letters[-1].payload["topic"] == deployment.topics.campaigns
    (decision,) = await deployment.decided(
        await deployment.publish(request(rules.campaign_id, BASE_MS + 12 * DAY_MS, "c-user"))
    )
    assert decision.topic == "served"
    assert decision.payload["campaign_version"] == version
    assert decision.payload["cost"] == "0.0025"


async def test_metrics_count_decisions_and_dead_letters(deployment: Deployment) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(deployment.workers[0].url("/metrics"))
    text = response.text
    assert response.status_code == 200
    assert 'adstream_decisions_total{outcome="served",reason=""}' in text
    assert 'adstream_dead_letters_total{reason="undecodable"}' in text
    assert "adstream_decision_latency_seconds_bucket" in text
    assert 'adstream_table_keys{table="seen"}' in text
