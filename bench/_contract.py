"""What the pipeline benchmark's harness and its contenders agree on.

Every contender is a process started with `KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL` and
`ADSTREAM_TOPIC_PREFIX` in its environment. It reads `AdRequest` JSON from `<prefix>ad-requests`
(keyed by user key, record timestamp = event time) and writes one decision per request, a JSON
object with a `request_id` field keyed by campaign_id, to `<prefix>ad-served` or
`<prefix>ad-denied`. The two stand-in contenders (the aiokafka limit and the Faust peer) do not
read campaigns: they fetch the one upstream named by `BENCH_VAST_URL`.
"""

from __future__ import annotations

import os

import msgspec

from models.events import AdRequest

PREFIX_ENV = "ADSTREAM_TOPIC_PREFIX"
VAST_URL_ENV = "BENCH_VAST_URL"

REQUESTS = "ad-requests"
CAMPAIGNS = "campaigns"
SERVED = "ad-served"
DENIED = "ad-denied"
LEASES = "budget-leases"
"""adstream's own: asks and grants between its deciding partitions and its budget banks."""
# The peer's intermediate topic: requests re-keyed by campaign_id.
PEER_BY_CAMPAIGN = "peer-by-campaign"


class BenchDecision(msgspec.Struct, frozen=True):
    """The decision the stand-in contenders emit.

    It carries the VAST document like `AdServed` does, so their output records are about as
    large as adstream's and the broker and the reader do comparable work for all three.
    """

    schema: int
    request_id: str
    correlator: str
    campaign_id: str
    placement_id: str
    timestamp: int
    status: int
    vast: str

    @classmethod
    def of(cls, request: AdRequest, status: int, vast: str) -> BenchDecision:
        context = request.context
        return cls(
            schema=1,
            request_id=context.request_id,
            correlator=context.correlator,
            campaign_id=request.campaign_id,
            placement_id=request.placement_id,
            timestamp=context.timestamp,
            status=status,
            vast=vast,
        )


class ContenderEnv(msgspec.Struct, frozen=True):
    bootstrap_servers: str
    prefix: str
    vast_url: str

    @classmethod
    def from_environ(cls) -> ContenderEnv:
        return cls(
            bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            prefix=os.environ[PREFIX_ENV],
            vast_url=os.environ[VAST_URL_ENV],
        )

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"


def decision_suffix(status: int) -> str:
    """An upstream 200 is an ad; anything else is a denial (as `upstream_error` would be)."""
    return SERVED if status == 200 else DENIED
