"""Why an `upstream_error` denial happened, in the worker's log: the denial itself carries
only the IAB code (`detail: "301"`), which does not tell a refused connection from a timeout,
an HTTP status or a document that did not parse. Rate-limited per endpoint: a failing ad
server fails every request sent to it."""

from __future__ import annotations

import logging
import time

from models.events import AdRequest
from streams.log_sampler import LogSampler
from streams.state.campaigns import CampaignRules
from streams.vast.breaker import endpoint_of
from streams.vast.result import VastResult

log = logging.getLogger(__name__)

LINES_PER_ENDPOINT = 5
INTERVAL_S = 60.0
"""At most `LINES_PER_ENDPOINT` lines per endpoint in this long; the next one says how many
were left out."""

# One per worker process, like the endpoints it limits.
_sampler = LogSampler(INTERVAL_S, LINES_PER_ENDPOINT)


def explain_upstream_error(rules: CampaignRules, request: AdRequest, result: VastResult) -> None:
    """Log the causes of a failed resolution (nothing for an ad or a "no ad" answer)."""
    if result.status != "error":
        return
    # The last document asked for is where the chain broke; the campaign's own URL if none.
    url = result.chain[-1].url if result.chain else rules.vast_url
    try:
        endpoint = endpoint_of(url)
    except ValueError:  # a wrapper's URL that does not parse (it failed as 301 for that)
        endpoint = url
    left_out = _sampler.admit(endpoint, time.monotonic())
    if left_out is None:
        return
    causes = "; ".join(f"{report.code} {report.message}" for report in result.errors)
    more = f" ({left_out} more from this endpoint not logged)" if left_out else ""
    context = request.context
    log.warning(
        "upstream_error %s from %s: %s%s",
        result.error_code,
        endpoint,
        causes or "no cause reported",
        more,
        extra={
            "request_id": context.request_id,
            "correlator": context.correlator,
            "campaign_id": request.campaign_id,
        },
    )
