"""The decision stage's parking of requests waiting for a lease: the earliest parked offset of
each partition, which holds back its commits, against a model of every parked request."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams.worker.decide_stage import Parking

PARTITIONS = [TP("ad-requests", 0), TP("ad-requests", 1)]
LEASES = [("campaign-a", 0), ("campaign-b", 0), ("campaign-a", 1)]


def parked(tp: TP, offset: int) -> tuple[Any, Any]:
    event = SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))
    request = SimpleNamespace(context=SimpleNamespace(request_id=f"{tp.partition}-{offset}"))
    return event, request


operations = st.lists(
    st.one_of(
        st.tuples(st.just("park"), st.sampled_from(LEASES), st.sampled_from(PARTITIONS)),
        st.tuples(st.just("take"), st.sampled_from(LEASES), st.none()),
        st.tuples(st.just("forget"), st.none(), st.sampled_from(PARTITIONS)),
    ),
    max_size=60,
)


@given(operations)
def test_the_earliest_parked_offset_is_the_least_still_parked(ops: list[Any]) -> None:
    parking = Parking()
    model: dict[tuple[str, int], list[tuple[TP, int]]] = {}
    next_offset = dict.fromkeys(PARTITIONS, 0)
    for op, lease, tp in ops:
        if op == "park":
            offset = next_offset[tp]
            next_offset[tp] += 1
            parking.park(lease, *parked(tp, offset))
            model.setdefault(lease, []).append((tp, offset))
        elif op == "take":
            taken = parking.take(lease)
            expected = model.pop(lease, [])
            assert [(p.event.message.tp, p.event.message.offset) for p in taken] == expected
            for p in taken:  # taken requests that still do not fit are parked again
                if p.event.message.offset % 2:
                    parking.park(lease, p.event, p.request)
                    model.setdefault(lease, []).append((p.event.message.tp, p.event.message.offset))
        else:
            parking.forget([tp])
            for key in list(model):
                model[key] = [(t, o) for t, o in model[key] if t != tp]
        for partition in PARTITIONS:
            offsets = [o for entries in model.values() for t, o in entries if t == partition]
            assert parking.first_offset(partition) == min(offsets, default=None)
