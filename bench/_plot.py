"""A picture beside a benchmark's JSON (`results/x.json` -> `results/x.png`): some of the
report's numbers as bar charts, one panel per metric. Each benchmark says which numbers
(`Panel`s, plain data taken from its report); this draws them with matplotlib."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec
from matplotlib.figure import Figure

COLUMNS = 2
DPI = 100


class Panel(msgspec.Struct, frozen=True):
    title: str
    """The metric and its unit."""
    bars: Mapping[str, float | None]
    """Label -> value, drawn top to bottom in this order; None (not measured) is left out."""


def save_beside(report: Path, title: str, panels: Sequence[Panel]) -> Path:
    """Draw `panels` into the PNG beside `report` (same name, `.png`); returns its path."""
    rows = -(-len(panels) // COLUMNS)
    tallest = max((len(panel.bars) for panel in panels), default=1)
    figure = Figure(figsize=(12, rows * (1.0 + 0.3 * tallest) + 0.6), layout="constrained")
    figure.suptitle(title)
    for i, panel in enumerate(panels):
        axes = figure.add_subplot(rows, COLUMNS, i + 1)
        axes.set_title(panel.title, fontsize="medium")
        measured = {label: value for label, value in panel.bars.items() if value is not None}
        labels, values = list(measured), list(measured.values())
        bars = axes.barh(labels, values, height=0.6)
        axes.bar_label(bars, fmt=_number, padding=3, fontsize="small")
        axes.set_xlim(0, max(values, default=1) * 1.2 or 1)
        axes.invert_yaxis()
        axes.tick_params(axis="y", labelsize="small")
    path = report.with_suffix(".png")
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
