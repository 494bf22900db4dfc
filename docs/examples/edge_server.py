"""An edge ad server in one file: a player asks `GET /ad?campaign=...&placement=...`, the edge
publishes the request to adstream and answers with the decision, within a deadline.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python docs/examples/edge_server.py --port 8080

The whole path: the player's cookies become the request's `SessionContext` (GDPR consent
included: `models.context.user_id_of` decides who is anonymous), `EdgePublisher.decide`
publishes it keyed by user and waits for its decision, and the edge returns the served VAST
(200), an empty VAST when denied or late (200, so the player moves on), or 503 when Kafka
cannot take the request.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from aiohttp import web

from models.context import SessionContext
from models.events import SCHEMA_VERSION, AdRequest, AdServed
from streams.edge import DecisionTimeout, EdgePublisher, PublishError
from streams.settings import Settings

EDGE = web.AppKey("edge", EdgePublisher)
DEADLINE_S = 0.5
"""What a player waits for an ad before it plays the content without one."""
NO_AD = '<VAST version="4.2"/>'


async def ad(request: web.Request) -> web.Response:
    campaign_id = request.query.get("campaign")
    if not campaign_id:
        raise web.HTTPBadRequest(text="campaign is required")
    params = {k: v for k, v in request.query.items() if k not in ("campaign", "placement")}
    ad_request = AdRequest(
        schema=SCHEMA_VERSION,
        context=SessionContext.create(cookies=dict(request.cookies)),
        campaign_id=campaign_id,
        placement_id=request.query.get("placement", "default"),
        params=params,
    )
    try:
        decision = await request.app[EDGE].decide(ad_request, timeout=DEADLINE_S)
    except PublishError:
        raise web.HTTPServiceUnavailable(text="ad decisions unavailable") from None
    headers = {"X-Request-Id": ad_request.context.request_id}
    if isinstance(decision, AdServed):
        return web.Response(text=decision.vast, content_type="application/xml", headers=headers)
    headers["X-Ad-Outcome"] = (
        "timeout" if isinstance(decision, DecisionTimeout) else f"denied:{decision.reason}"
    )
    return web.Response(text=NO_AD, content_type="application/xml", headers=headers)


def edge_app(settings: Settings) -> web.Application:
    app = web.Application()
    app.router.add_get("/ad", ad)

    async def publisher(app: web.Application) -> AsyncIterator[None]:
        async with EdgePublisher.from_settings(settings) as edge:
            app[EDGE] = edge
            yield

    app.cleanup_ctx.append(publisher)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    web.run_app(edge_app(Settings.from_env()), host="127.0.0.1", port=parser.parse_args().port)
