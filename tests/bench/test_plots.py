"""The pictures beside the benchmarks' reports: drawn from the numbers of the committed
reports themselves, each a PNG beside its JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.image import imread

from bench import billing_ledgers, commit_sweep, infra_startup, pipeline, vast_resolver
from bench._plot import Panel, save_beside
from tests.png import png_dimensions

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def report(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return loaded


def test_pipeline_panels_are_the_contenders_numbers() -> None:
    loaded = report("pipeline")
    drawn = pipeline.panels(loaded)
    assert [panel.title.split(",")[0] for panel in drawn] == [
        "decisions/s (throughput phase)",
        "CPU us per decision (throughput phase)",
        "p50 latency",
        "p99 latency",
        "p99 latency",  # at half the contender's own rate: absent from older reports
    ]
    adstream = loaded["contenders"]["adstream"]
    assert drawn[0].bars["adstream"] == adstream["throughput"]["decisions_per_s"]
    assert drawn[3].bars["adstream"] == adstream["latency"]["p99_ms"]
    assert set(drawn[1].bars) == set(loaded["contenders"])


def test_commit_sweep_panels_have_one_bar_per_point() -> None:
    loaded = report("commit_sweep")
    p99 = commit_sweep.panels(loaded)[1]
    drawn = [value for value in p99.bars.values() if value is not None]
    assert sorted(drawn) == sorted(point["p99_ms"] for point in loaded["points"])
    first = min(loaded["points"], key=lambda p: (p["rate"], p["commit_interval_s"]))
    assert first["p99_ms"] in p99.bars.values()


def test_vast_resolver_and_infra_startup_panels() -> None:
    rows = report("vast_resolver")["rows"]
    cpu, rate = vast_resolver.panels(rows)
    assert len(cpu.bars) == len(rows) == len(rate.bars)
    assert cpu.bars["resolver, one-hop x1"] == next(
        row["cpu_us"]
        for row in rows
        if (row["contender"], row["chain"], row["concurrency"]) == ("resolver", "one-hop", 1)
    )
    startup = report("infra_startup")
    (seconds,) = infra_startup.panels(startup)
    assert seconds.bars == {k: v for k, v in startup.items() if k.endswith("_s")}


def test_billing_ledgers_panels_compare_the_ledgers() -> None:
    loaded = report("billing_ledgers")
    rate, cpu = billing_ledgers.panels(loaded)
    assert set(rate.bars) == set(cpu.bars) == {"sqlite", "postgresql"}
    assert rate.bars["postgresql"] == loaded["ledgers"]["postgresql"]["charges_per_s"]
    assert cpu.bars["sqlite"] == loaded["ledgers"]["sqlite"]["cpu_us_per_charge"]


def test_the_picture_lands_beside_the_report(tmp_path: Path) -> None:
    copy = tmp_path / "pipeline.json"
    shutil.copy(RESULTS / "pipeline.json", copy)
    path = save_beside(copy, "bench.pipeline", pipeline.panels(report("pipeline")))
    assert path == tmp_path / "pipeline.png"
    width, height = png_dimensions(path)
    assert (width, height) == (1200, imread(path).shape[0])
    # Not a blank canvas: the bars are drawn.
    assert len(np.unique(imread(path).reshape(-1, 4), axis=0)) > 10
    empty = save_beside(tmp_path / "none.json", "nothing", [Panel("nothing", {})])
    png_dimensions(empty, min_bytes=1_000)
