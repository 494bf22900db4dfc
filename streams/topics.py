"""The names of the topics one deployment uses (docs/design.md, "Topics" and "Events")."""

from __future__ import annotations

import msgspec


class Topics(msgspec.Struct, frozen=True):
    requests: str
    campaigns: str
    served: str
    denied: str
    dlq: str
    leases: str
    """Partitioned like `requests`: a grant goes to the partition of the lease it fills."""

    @classmethod
    def named(cls, prefix: str = "") -> Topics:
        """The topics under `prefix`."""
        return cls(
            requests=f"{prefix}ad-requests",
            campaigns=f"{prefix}campaigns",
            served=f"{prefix}ad-served",
            denied=f"{prefix}ad-denied",
            dlq=f"{prefix}ad-requests-dlq",
            leases=f"{prefix}budget-leases",
        )

    @property
    def public(self) -> tuple[str, ...]:
        return (self.requests, self.campaigns, self.served, self.denied, self.dlq, self.leases)


class Partitions(msgspec.Struct, frozen=True):
    """How the worker's source topics are partitioned (tables follow their sources)."""

    requests: int
    campaigns: int
