"""The names of the topics one deployment uses (docs/design.md, "Topics" and "Events")."""

from __future__ import annotations

import msgspec


class Topics(msgspec.Struct, frozen=True):
    requests: str
    campaigns: str
    served: str
    denied: str
    dlq: str
    by_campaign: str
    """Internal: valid, first-seen requests re-keyed by campaign_id."""

    @classmethod
    def named(cls, prefix: str = "", app_id: str = "adstream") -> Topics:
        """The topics under `prefix`; internal ones start with the group id, `prefix` and
        `app_id` (`Settings.group_id`)."""
        return cls(
            requests=f"{prefix}ad-requests",
            campaigns=f"{prefix}campaigns",
            served=f"{prefix}ad-served",
            denied=f"{prefix}ad-denied",
            dlq=f"{prefix}ad-requests-dlq",
            by_campaign=f"{prefix}{app_id}-requests-by-campaign",
        )

    @property
    def public(self) -> tuple[str, ...]:
        return (self.requests, self.campaigns, self.served, self.denied, self.dlq)


class Partitions(msgspec.Struct, frozen=True):
    """How the worker's source topics are partitioned (tables follow their sources)."""

    requests: int
    campaigns: int
