"""What a worker's resolutions reuse: parsing and unwrapping depend only on the documents.

Most requests of a campaign walk the same chain and get the same documents back; what the
resolver builds from them is the same for every request (macros stay templates, and nothing
of a request, its hops or their timings goes into `AdServed.ad` or `vast`). So each body is
parsed once, keyed by its digest, and each selection unwrapped once, keyed by the digests of
the documents its ads came through and where each ad sits in them. Both are bounded by
entries and by an estimate of the bytes they pin; a large document is parsed and unwrapped
anew each time rather than kept.
"""

from __future__ import annotations

import hashlib

from streams.vast.deadline import Deadline
from streams.vast.lru import Lru
from streams.vast.parse import Parsed, parse_tree
from streams.vast.result import ResolvedAd

Digest = bytes
"""16 bytes of BLAKE2b of a document's body."""
Path = tuple[tuple[Digest, int], ...]
"""An ad's way through its chain: each document's digest and the index of the `<Ad>` taken
from it, outermost first, the InLine last."""
Selection = tuple[int, tuple[tuple[Path, int | None], ...]]
"""A request's served ads, each its path and its place in the pod, under an ad size bound."""

PARSED_TREE_BYTES_PER_BODY_BYTE = 10
"""What a parsed document pins per byte of its body: lxml's tree and the typed `Document`
(measured ~9 for a dense 1.7 KB InLine)."""


class ResolverMemo:
    """Parsed documents and unwrapped selections, each in its own bounded LRU. Share one per
    worker (across upstreams), like the transport."""

    def __init__(
        self,
        *,
        max_entries: int = 1024,
        max_parsed_bytes: int = 32 << 20,
        max_unwrapped_bytes: int = 16 << 20,
        max_body_bytes: int = 100_000,
        max_selection_bytes: int = 256_000,
    ) -> None:
        """`max_body_bytes`: the largest body kept parsed; `max_selection_bytes`: the largest
        unwrapped selection kept (`selection_bytes`)."""
        self.parsed: Lru[tuple[Digest, int], Parsed] = Lru(
            max_entries=max_entries,
            max_bytes=max_parsed_bytes,
            max_entry_bytes=max_body_bytes * PARSED_TREE_BYTES_PER_BODY_BYTE,
        )
        self.unwrapped: Lru[Selection, tuple[ResolvedAd, ...]] = Lru(
            max_entries=max_entries,
            max_bytes=max_unwrapped_bytes,
            max_entry_bytes=max_selection_bytes,
        )

    def parse(self, body: bytes, *, max_ads: int, deadline: Deadline) -> tuple[Digest, Parsed]:
        """`body` parsed (`parse_tree`), and its digest. Raises as `parse_tree` does; only a
        document that parsed is kept."""
        digest = hashlib.blake2b(body, digest_size=16).digest()
        # The bound on ads is part of the key: a document within one bound may pass another.
        key = (digest, max_ads)
        parsed = self.parsed.get(key)
        if parsed is None:
            parsed = parse_tree(body, max_ads=max_ads, deadline=deadline)
            self.parsed.put(key, parsed, len(body) * PARSED_TREE_BYTES_PER_BODY_BYTE)
        return digest, parsed


def selection_bytes(ads: tuple[ResolvedAd, ...], ad_chars: int) -> int:
    """What an unwrapped selection pins, roughly: its one document, and its ads' URLs
    (`ad_chars`, as `chain.chars` counts them) twice over for the strings' own overhead."""
    return len(ads[0].vast) + 2 * ad_chars
