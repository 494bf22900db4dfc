"""The worker's log explains what the topics only code: why an upstream failed (per endpoint,
rate-limited), and which request a dead letter was."""

from __future__ import annotations

import msgspec

from infra.process import free_port
from models.codec import encode
from streams.worker.upstream_log import LINES_PER_ENDPOINT
from tests.pipeline.harness import BASE_MS, Deployment, campaign, request
from tests.upstream import VastServer


def log_lines(deployment: Deployment) -> list[dict[str, object]]:
    text = deployment.workers[0].log_path.read_text()
    return [msgspec.json.decode(line) for line in text.splitlines() if line.startswith("{")]


async def test_upstream_errors_are_logged_with_their_cause_a_few_per_endpoint(
    deployment: Deployment, broken_url: str, vast_server: VastServer
) -> None:
    refused_url = f"http://127.0.0.1:{free_port()}/vast"
    not_vast_url = vast_server.add("<html>not VAST</html>", name="page.html")
    refused, broken, not_vast = (
        campaign(refused_url, anonymous_policy="uncapped"),
        campaign(broken_url),
        campaign(not_vast_url),
    )
    await deployment.load(refused, broken, not_vast)
    many = [request(refused.campaign_id, BASE_MS + i, f"user-{i}") for i in range(20)]
    one_each = [request(c.campaign_id, BASE_MS, "user-1") for c in (broken, not_vast)]
    decided = await deployment.decided(await deployment.publish(*many, *one_each))
    assert {d.reason for d in decided} == {"upstream_error"}

    lines = [
        line for line in log_lines(deployment) if str(line["message"]).startswith("upstream_error")
    ]
    from_refused = [line for line in lines if f"from {refused_url}:" in str(line["message"])]
    assert 1 <= len(from_refused) <= LINES_PER_ENDPOINT
    assert all("Connect call failed" in str(line["message"]) for line in from_refused)
    ids = {r.context.request_id: r.context.correlator for r in many}
    assert all(ids[str(line["request_id"])] == line["correlator"] for line in from_refused)
    assert {line["campaign_id"] for line in from_refused} == {refused.campaign_id}
    (from_broken,) = [line for line in lines if line["campaign_id"] == broken.campaign_id]
    assert "301 HTTP 503 from" in str(from_broken["message"])
    (from_page,) = [line for line in lines if line["campaign_id"] == not_vast.campaign_id]
    assert str(from_page["message"]).startswith(f"upstream_error 101 from {not_vast_url}: 101 ")


async def test_a_dead_letter_line_carries_the_ids_its_message_had(
    deployment: Deployment,
) -> None:
    bad = request("some-campaign", BASE_MS, "user-1")
    invalid = encode(bad).replace(b'"placement-1"', b'""')
    before = len(deployment.dead_letters)
    await deployment.publish_raw(invalid)
    await deployment.publish_raw(b"\x00 no ids here")
    await deployment.dead_lettered(before + 2)

    letters = [line for line in log_lines(deployment) if "dead letter" in str(line["message"])]
    with_ids = [line for line in letters if line.get("request_id") == bad.context.request_id]
    assert len(with_ids) == 1 and with_ids[0]["correlator"] == bad.context.correlator
    assert any(
        "undecodable" in str(line["message"]) and "request_id" not in line for line in letters
    )
