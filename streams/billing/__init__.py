"""Billing: charges every served ad exactly once into a SQLite ledger (`adstream billing`)."""
