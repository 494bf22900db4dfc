"""`--plot PATH`: a `Timeline` drawn as one PNG with matplotlib (the `plot` extra).

Three parts: decisions per bucket of event time by outcome; each campaign's spend against
its lifetime budget over event time (one panel per campaign and currency); each cap's peak,
the most ads one user got within one window, against the cap. Spend is drawn in integer
micros and labelled as exact decimals.
"""

from __future__ import annotations

import importlib.util
import math
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from models.money import from_micros
from streams.timeline import Timeline

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WIDTH_IN = 12.0
DPI = 100
SPEND_COLUMNS = 3
DAY_MS = 86_400_000


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def available() -> bool:
    """Whether matplotlib is installed (checked before long runs that end with a plot)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_png(timeline: Timeline, path: Path, title: str) -> None:
    """Draw `timeline` into the PNG file `path` (replaced if it exists)."""
    figure(timeline, title).savefig(path, format="png", dpi=DPI)


def figure(timeline: Timeline, title: str) -> Figure:
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'adstream[plot]'") from exc
    spend_rows = math.ceil(len(timeline.spend) / SPEND_COLUMNS)
    heights = [3.0, *([2.2] * spend_rows), 0.4 + 0.3 * max(1, len(timeline.caps))]
    fig = Figure(figsize=(WIDTH_IN, sum(heights) + 1.0), layout="constrained")
    fig.suptitle(title)
    grid = fig.add_gridspec(len(heights), SPEND_COLUMNS, height_ratios=heights)
    # Matplotlib's dates: days since its epoch, 1970-01-01 UTC.
    times = [t / DAY_MS for t in timeline.bucket_starts()]

    decisions = fig.add_subplot(grid[0, :])
    minutes = timeline.bucket_ms // 60_000
    decisions.set_title(f"decisions per {minutes} min of event time (UTC), by outcome")
    for outcome, counts in timeline.decisions.items():
        decisions.plot(times, counts, label=outcome, drawstyle="steps-post")
    decisions.xaxis_date(UTC)
    if timeline.decisions:
        decisions.legend(loc="upper left", fontsize="small", ncols=4)

    money = FuncFormatter(lambda micros, _: from_micros(max(0, round(micros))))
    for i, series in enumerate(timeline.spend):
        panel = fig.add_subplot(grid[1 + i // SPEND_COLUMNS, i % SPEND_COLUMNS])
        panel.set_title(f"{series.campaign_id}: spend, {series.currency}", fontsize="medium")
        panel.plot(times, series.spent, label="spent", drawstyle="steps-post")
        if series.lifetime is not None:
            panel.axhline(series.lifetime, color="tab:red", linestyle="--", label="budget")
        panel.xaxis_date(UTC)
        # Headroom above the budget line, so that spend reaching it stays visible.
        panel.set_ylim(0, max(1, series.spent[-1], series.lifetime or 0) * 1.15)
        panel.yaxis.set_major_formatter(money)
        panel.tick_params(axis="x", labelrotation=30, labelsize="small")
        panel.legend(loc="upper left", fontsize="small")

    caps = fig.add_subplot(grid[-1, :])
    caps.set_title("frequency caps: the most ads one user got in one window, against the cap")
    labels = [f"{bar.campaign_id} {bar.cap}" for bar in timeline.caps]
    caps.barh(
        labels, [bar.peak for bar in timeline.caps], height=0.5, label="peak", color="tab:blue"
    )
    caps.scatter(
        [bar.max for bar in timeline.caps], labels, marker="|", s=300, color="tab:red", label="cap"
    )
    for y, bar in enumerate(timeline.caps):
        caps.annotate(bar.user_id or "-", (bar.peak, y), xytext=(4, -3), textcoords="offset points")
    caps.set_xlim(0, max((max(bar.max, bar.peak) for bar in timeline.caps), default=1) * 1.25)
    caps.invert_yaxis()
    if timeline.caps:
        caps.legend(loc="lower right", fontsize="small")
    return fig
