"""Contender (b), the peer: the pipeline as a typical Faust user would first write it.

One agent per stage, Faust's defaults (processing_guarantee="exactly_once", so Kafka
transactions and read_committed): `rekey` decodes each request and re-keys it by campaign_id
onto an intermediate topic; `decide` does one httpx GET of the VAST upstream per event and sends
the decision. msgspec decodes and encodes, as everywhere in adstream, so the peer is not slowed
by Faust's own model layer.

Run by the harness: `python -m bench._peer worker -l info --web-port PORT` with the environment
of `bench._contract`, in a scratch working directory (Faust keeps its data directory there).
"""

from __future__ import annotations

import logging

import faust
import httpx

from bench._contract import (
    DENIED,
    PEER_BY_CAMPAIGN,
    REQUESTS,
    SERVED,
    BenchDecision,
    ContenderEnv,
    decision_suffix,
)
from models.codec import decode_request, encode

env = ContenderEnv.from_environ()
# At `-l info`, the level Faust's docs run workers with, httpx logs a line per request: a cost a
# user would switch off once they saw it, and not the one measured here.
logging.getLogger("httpx").setLevel(logging.WARNING)
app = faust.App(
    env.topic("peer"),
    broker=[f"kafka://{server}" for server in env.bootstrap_servers.split(",")],
    processing_guarantee="exactly_once",
    store="memory://",
)
requests_topic = app.topic(env.topic(REQUESTS), value_serializer="raw")
by_campaign_topic = app.topic(env.topic(PEER_BY_CAMPAIGN), value_serializer="raw")
decision_topics = {
    suffix: app.topic(env.topic(suffix), value_serializer="raw") for suffix in (SERVED, DENIED)
}


@app.agent(requests_topic)
async def rekey(stream: faust.StreamT[bytes]) -> None:
    async for value in stream:
        request = decode_request(value)
        await by_campaign_topic.send(key=request.campaign_id.encode(), value=value)


@app.agent(by_campaign_topic)
async def decide(stream: faust.StreamT[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        async for value in stream:
            request = decode_request(value)
            response = await client.get(env.vast_url)
            decision = BenchDecision.of(request, response.status_code, response.text)
            await decision_topics[decision_suffix(response.status_code)].send(
                key=request.campaign_id.encode(),
                value=encode(decision),
                timestamp=decision.timestamp / 1000,
            )


if __name__ == "__main__":
    app.main()
