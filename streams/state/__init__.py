"""The worker's state as named concepts, each pure (no I/O) and stored in Faust tables.

- `campaigns`: the rules of each campaign in integer micros, with the offset they came from.
- `frequency`: per (user, campaign) served-impression times and the sliding-window cap check.
- `spend`: per campaign lifetime and daily (UTC day of event time) spend.
- `expiry`: which keys have aged out by event time, so state stays bounded.
"""

from streams.state.campaigns import CampaignRules, Cap
from streams.state.decision_book import DecisionBook, Deny, Reservation, Reserve, Verdict, Wait
from streams.state.expiry import ExpiryIndex
from streams.state.frequency import Impressions
from streams.state.leases import BudgetBank, LeaseBook
from streams.state.spend import Spend

__all__ = [
    "BudgetBank",
    "CampaignRules",
    "Cap",
    "DecisionBook",
    "Deny",
    "ExpiryIndex",
    "Impressions",
    "LeaseBook",
    "Reservation",
    "Reserve",
    "Spend",
    "Verdict",
    "Wait",
]
