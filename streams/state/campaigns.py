"""A campaign's rules as the decision needs them: integer micros and milliseconds."""

from __future__ import annotations

import msgspec

from models.events import Campaign
from models.money import CPM_MAX_PLACES, impression_cost, to_micros


class Cap(msgspec.Struct, frozen=True):
    max: int
    window_ms: int

    @property
    def label(self) -> str:
        """How a denial's `detail` names this cap, e.g. `3/3600s`."""
        return f"{self.max}/{self.window_ms // 1000}s"


class CampaignRules(msgspec.Struct, frozen=True):
    campaign_id: str
    version: int
    """Offset of the `campaigns` record these rules came from."""
    active: bool
    vast_url: str
    currency: str
    cost_micros: int
    """One impression: CPM / 1000."""
    lifetime_micros: int | None
    daily_micros: int | None
    caps: tuple[Cap, ...]
    anonymous_allowed: bool
    """True when the campaign is uncapped for anonymous users (policy `uncapped`)."""

    @property
    def budgets(self) -> tuple[int | None, int | None]:
        """(lifetime, daily) in micros; None where there is no such budget."""
        return self.lifetime_micros, self.daily_micros

    @property
    def longest_window_ms(self) -> int:
        return max((cap.window_ms for cap in self.caps), default=0)

    @classmethod
    def from_campaign(cls, campaign: Campaign, version: int) -> CampaignRules:
        """Rules of a campaign already validated by `models.codec.decode_campaign`."""
        budget = campaign.budget
        return cls(
            campaign_id=campaign.campaign_id,
            version=version,
            active=campaign.active,
            vast_url=campaign.vast_url,
            currency=campaign.currency,
            cost_micros=impression_cost(to_micros(campaign.cpm, max_places=CPM_MAX_PLACES)),
            lifetime_micros=None if budget.lifetime is None else to_micros(budget.lifetime),
            daily_micros=None if budget.daily is None else to_micros(budget.daily),
            caps=tuple(Cap(cap.max, cap.window_s * 1000) for cap in campaign.frequency_caps),
            anonymous_allowed=campaign.anonymous_policy == "uncapped",
        )
