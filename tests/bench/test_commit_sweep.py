"""The commit sweep at a tiny size, so that its harness (and adstream's plug-in to the pipeline
benchmark: its campaigns, settings and readiness route) cannot rot.

It runs as users run it (`python -m bench.commit_sweep`, in its own process) against the
session's broker, for one setting: the worker must become ready, decide the warm-up and every
request exactly once, serve them all (the campaigns' cap and budget never bind), and the
results file must carry the numbers the sweep reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.commit_sweep import parse_args

REPO = Path(__file__).resolve().parents[2]
RATE = 50
SECONDS = 2
WARMUP = 16


def test_options() -> None:
    options = parse_args(["--commit-intervals", "0.1,0.02", "--fetch-waits", "5", "--rates", "9,3"])
    assert options.commit_intervals == (0.1, 0.02)
    assert options.fetch_waits == (5,)
    assert options.rates == (3.0, 9.0)  # lowest first: a backlog would spoil the next


def test_one_setting_decides_every_request_exactly_once(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "commit_sweep.json"
    argv = ["--commit-intervals", "0.1", "--fetch-waits", "20", "--rates", str(RATE)]
    argv += ["--seconds", str(SECONDS), "--warmup", str(WARMUP), "--idle", "1"]
    run = subprocess.run(
        [sys.executable, "-m", "bench.commit_sweep", *argv, "--output", str(output)],
        cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    report = json.loads(output.read_text())
    assert set(report) == {"config", "points"}
    (point,) = report["points"]
    assert (point["commit_interval_s"], point["fetch_wait_ms"], point["rate"]) == (0.1, 20, RATE)
    assert point["stopped_by"] == "sigterm"
    assert point["ready_s"] > 0
    assert point["warmup_outcomes"] == {"ad-served": WARMUP}
    assert point["idle_cpu_cores"] >= 0
    requests = RATE * SECONDS
    assert point["requests"] == point["decisions"] == requests
    assert point["missing"] == point["duplicates"] == 0
    assert point["outcomes"] == {"ad-served": requests}
    assert 0 < point["p50_ms"] <= point["p99_ms"]
    assert point["cpu_us_per_decision"] > 0
