"""Each campaign's VAST upstream, sharing one HTTP transport across the worker."""

from __future__ import annotations

from models.codec import MAX_RECORD_BYTES
from models.events import AdRequest
from streams.state.campaigns import CampaignRules
from streams.vast.breaker import CircuitBreaker
from streams.vast.memo import ResolverMemo
from streams.vast.parse import DEFAULT_MAX_ADS
from streams.vast.result import VastResult
from streams.vast.retry import RetryPolicy
from streams.vast.transport import VastTransport
from streams.vast.upstream import DEFAULT_MAX_FETCHES, VastUpstream


class CampaignUpstreams:
    """Resolves a request against its campaign's `vast_url` (macros from its context/params)."""

    def __init__(
        self,
        transport: VastTransport,
        *,
        hop_timeout: float,
        chain_timeout: float,
        retry: RetryPolicy,
        breaker: CircuitBreaker | None,
        max_fetches: int = DEFAULT_MAX_FETCHES,
        max_ads: int = DEFAULT_MAX_ADS,
    ) -> None:
        self.transport = transport
        self.hop_timeout = hop_timeout
        self.chain_timeout = chain_timeout
        self.max_fetches = max_fetches
        self.max_ads = max_ads
        self.retry = retry
        self.breaker = breaker
        """One for all campaigns: an ad server that is slow is slow for each of them."""
        self.memo = ResolverMemo()
        """One for all campaigns: campaigns of one ad server get the same documents back."""
        self._upstreams: dict[str, tuple[int, VastUpstream]] = {}

    def upstream_for(self, rules: CampaignRules) -> VastUpstream:
        known = self._upstreams.get(rules.campaign_id)
        if known is not None and known[0] == rules.version:
            return known[1]
        upstream = VastUpstream(
            rules.vast_url,
            transport=self.transport,
            hop_timeout=self.hop_timeout,
            timeout=self.chain_timeout,
            max_fetches=self.max_fetches,
            max_ads=self.max_ads,
            # An ad that holds more could never fit its `AdServed` record.
            max_ad_chars=MAX_RECORD_BYTES,
            retry=self.retry,
            breaker=self.breaker,
            memo=self.memo,
        )
        self._upstreams[rules.campaign_id] = (rules.version, upstream)
        return upstream

    async def resolve(self, rules: CampaignRules, request: AdRequest) -> VastResult:
        return await self.upstream_for(rules).fetch(params=request.params, context=request.context)

    async def aclose(self) -> None:
        for _, upstream in self._upstreams.values():
            await upstream.aclose()
        await self.transport.aclose()
