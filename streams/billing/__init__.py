"""Billing: charges every served ad exactly once into a ledger, SQLite or PostgreSQL
(`adstream billing`)."""

from streams.billing.consumer import BillingError, run
from streams.billing.ledger import Ledger, LedgerConflict, LedgerError
from streams.billing.report import Report

__all__ = [
    "BillingError",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "Report",
    "run",
]
