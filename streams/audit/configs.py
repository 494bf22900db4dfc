"""The history of `campaigns`: which configuration a decision's `campaign_version` names.

A version is the offset of a `Campaign` record in `campaigns` (in the partition its
campaign_id key hashes to). The worker puts a record in force only if it is valid
(`models.codec.decode_campaign_record`) and its key is its campaign_id; a null value deletes the
campaign. The same rules decide here which offsets are configurations at all, and
`CampaignRules` (the worker's own form of a configuration) is what decisions are checked
against.

`campaigns` is compacted: a configuration replaced long ago may have been removed by the
broker, and a decision naming it can no longer be verified (it shows as `wrong_version`,
saying so).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import msgspec

from models.codec import InvalidEvent, decode_campaign_record
from streams.audit.findings import Record
from streams.state.campaigns import CampaignRules


class _Entry(msgspec.Struct, frozen=True):
    key: str
    kind: Literal["config", "deletion", "invalid"]
    rules: CampaignRules | None = None
    problem: str | None = None


class ConfigHistory:
    """Every record of `campaigns` read, indexed by (partition, offset)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], _Entry] = {}
        self._partitions: defaultdict[str, set[int]] = defaultdict(set)
        self.versions: dict[tuple[str, int], CampaignRules] = {}
        """(campaign_id, version) -> rules, for every configuration that could be in force."""
        self._deletions: defaultdict[str, list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, record: Record) -> None:
        key = (record.key or b"").decode(errors="replace")
        self._partitions[key].add(record.partition)
        position = (record.partition, record.offset)
        if record.value is None:
            self._entries[position] = _Entry(key, "deletion")
            self._deletions[key].append(record.offset)
            return
        try:
            campaign = decode_campaign_record(key, record.value)
        except InvalidEvent as exc:
            self._entries[position] = _Entry(key, "invalid", problem=str(exc))
            return
        rules = CampaignRules.from_campaign(campaign, version=record.offset)
        self._entries[position] = _Entry(key, "config", rules)
        self.versions[(key, record.offset)] = rules

    def rules(self, campaign_id: str, version: int) -> CampaignRules | None:
        return self.versions.get((campaign_id, version))

    def why_not(self, campaign_id: str, version: int) -> str:
        """Why `version` names no configuration of `campaign_id` (for a `wrong_version`)."""
        partitions = sorted(self._partitions.get(campaign_id, ()))
        if not partitions:
            return f"campaigns holds no record of campaign {campaign_id!r} at all"
        reasons = []
        for partition in partitions:
            entry = self._entries.get((partition, version))
            where = f"campaigns[{partition}]@{version}"
            if entry is None:
                reasons.append(f"{where} holds no record (never written, or compacted away)")
            elif entry.key != campaign_id:
                reasons.append(f"{where} is campaign {entry.key!r}'s, not {campaign_id!r}'s")
            elif entry.kind == "deletion":
                reasons.append(f"{where} deletes the campaign")
            else:
                reasons.append(f"{where} was invalid and never in force ({entry.problem})")
        return "; ".join(reasons)

    def deleted_after(self, campaign_id: str, version: int) -> bool:
        """Whether the campaign was deleted by a record after `version`."""
        return any(offset > version for offset in self._deletions.get(campaign_id, ()))
