"""What `adstream audit --plot` draws: the timeline computed with the summary, its numbers
equal to the summary's, the same numbers in the matplotlib figure, and the PNG written."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from streams.audit.window import Window
from streams.decision_reader import Decision
from streams.plot import DPI, WIDTH_IN, figure, write_png
from streams.timeline import MAX_BUCKETS, MINUTE_MS, Timeline, build
from tests.audit.support import Simulator, campaign, request
from tests.pipeline.harness import BASE_MS
from tests.png import png_dimensions

URL = "https://ads.example/vast"


def simulated() -> Simulator:
    """Three hours of two campaigns: served, capped, out of budget, no fill, unknown."""
    sim = Simulator()
    sim.load(campaign(URL, campaign_id="capped", caps=[(2, 3600)], cpm="2.50"))
    sim.load(campaign(URL, campaign_id="budget", cpm="4.00", lifetime="0.02"))
    for i in range(180):
        t = BASE_MS + i * MINUTE_MS + 7_000
        sim.decide(request("capped", t, f"u{i % 7}"), "no_fill" if i % 11 == 0 else "served")
        if i % 3 == 0:
            sim.decide(request("budget", t + 1, f"u{i % 5}"))
        if i % 50 == 0:
            sim.decide(request("nobody", t + 2, "u1"))
    return sim


def test_the_timeline_holds_the_summary_s_numbers() -> None:
    audit = simulated().history.audit()
    summary, timeline = audit.summary, audit.timeline
    assert summary.violations == []
    assert timeline.bucket_ms == MINUTE_MS
    assert timeline.start_ms == BASE_MS
    assert len(timeline.bucket_starts()) == 180

    totals = {outcome: sum(counts) for outcome, counts in timeline.decisions.items()}
    assert totals == {"served": summary.served, **summary.denied}
    assert set(summary.denied) == {
        "campaign_unknown",
        "frequency_cap",
        "budget_exhausted",
        "no_fill",
    }
    # The minute of a decision is its bucket: minute 0 has the first no_fill of `capped`,
    # `budget` served and the unknown campaign; `budget` serves again in minute 3.
    assert timeline.decisions["served"][:4] == [1, 1, 1, 2]
    assert {outcome: counts[0] for outcome, counts in timeline.decisions.items()} == {
        "served": 1,
        "no_fill": 1,
        "campaign_unknown": 1,
        "frequency_cap": 0,
        "budget_exhausted": 0,
    }
    assert timeline.decisions["campaign_unknown"][0::50] == [1, 1, 1, 1]

    spent = {(s.campaign_id, s.currency): s.spent for s in timeline.spend}
    assert {key: series[-1] for key, series in spent.items()} == {
        (row.campaign_id, row.currency): row.micros for row in summary.spend
    }
    assert all(a <= b for series in spent.values() for a, b in pairwise(series))
    budgets = {s.campaign_id: s.lifetime for s in timeline.spend}
    assert budgets == {"capped": None, "budget": 20_000}
    # The budget campaign costs 4,000 micros a time: full after 5, from minute 12 on.
    assert spent[("budget", "USD")][12] == 20_000 and spent[("budget", "USD")][11] == 16_000

    caps = [(bar.campaign_id, bar.cap, bar.peak, bar.max) for bar in timeline.caps]
    assert caps == [("capped", "2/3600s", 2, 2)]


def test_a_window_keeps_the_timeline_to_it() -> None:
    window = Window(BASE_MS + 60 * MINUTE_MS, BASE_MS + 120 * MINUTE_MS)
    audit = simulated().history.audit(window)
    timeline = audit.timeline
    assert timeline.start_ms == window.start_ms
    assert len(timeline.bucket_starts()) == 60
    totals = {outcome: sum(counts) for outcome, counts in timeline.decisions.items()}
    assert totals == {"served": audit.summary.served, **audit.summary.denied}


def lines_of(axes: Axes) -> dict[str, list[int]]:
    return {
        str(line.get_label()): np.asarray(line.get_ydata()).tolist() for line in axes.get_lines()
    }


def test_the_figure_draws_exactly_the_timeline(tmp_path: Path) -> None:
    timeline = simulated().history.audit().timeline
    drawn = figure(timeline, "audit")
    decisions, *spend, caps = drawn.get_axes()
    assert lines_of(decisions) == timeline.decisions
    assert len(spend) == len(timeline.spend)
    for panel, series in zip(spend, timeline.spend, strict=True):
        assert series.campaign_id in panel.get_title()
        drawn_lines = lines_of(panel)
        assert drawn_lines["spent"] == series.spent
        if series.lifetime is not None:
            assert set(drawn_lines["budget"]) == {series.lifetime}
        assert "budget" in drawn_lines or series.lifetime is None
    bars = [patch.get_width() for patch in caps.patches if isinstance(patch, Rectangle)]
    assert bars == [bar.peak for bar in timeline.caps]

    path = tmp_path / "audit.png"
    write_png(timeline, path, "audit")
    width, height = png_dimensions(path)
    assert width == WIDTH_IN * DPI
    assert 400 < height < 4000


def test_no_decisions_draw_an_empty_picture(tmp_path: Path) -> None:
    empty = build([], [], [])
    assert (empty.buckets, empty.decisions, empty.spend, empty.caps) == (0, {}, [], [])
    write_png(empty, tmp_path / "empty.png", "nothing yet")
    png_dimensions(tmp_path / "empty.png", min_bytes=1_000)


@given(st.lists(st.integers(0, 40 * 86_400_000), min_size=1, max_size=200))
def test_every_decision_lands_in_the_bucket_of_its_event_time(offsets: list[int]) -> None:
    decisions = [
        Decision("denied", {"timestamp": BASE_MS + t, "reason": "no_fill"}, i)
        for i, t in enumerate(offsets)
    ]
    timeline: Timeline = build(decisions, [], [])
    counts = timeline.decisions["no_fill"]
    assert sum(counts) == len(offsets)
    assert timeline.buckets <= MAX_BUCKETS
    assert timeline.bucket_ms % MINUTE_MS == 0
    starts = timeline.bucket_starts()
    for t in offsets:
        bucket = (BASE_MS + t - timeline.start_ms) // timeline.bucket_ms
        assert starts[bucket] <= BASE_MS + t < starts[bucket] + timeline.bucket_ms
        assert counts[bucket] > 0
