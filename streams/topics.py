"""The names of the topics one deployment uses (docs/design.md, "Topics" and "Events")."""

from __future__ import annotations

import functools

import msgspec
from aiokafka.partitioner import murmur2


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


# aiokafka's murmur2 is pure Python (~35 us a call), and reports ask for each campaign.
@functools.lru_cache(maxsize=65_536)
def key_partition(key: str, partitions: int) -> int:
    """The partition Kafka's producers put a record keyed `key` in (their default
    partitioner): where a campaign's records land on `campaigns` and `budget-leases`."""
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions
