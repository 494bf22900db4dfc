"""The pipeline benchmark at a tiny size, so that its harness cannot rot.

It runs as users run it (`python -m bench.pipeline`, in its own process) against the session's
broker, with the aiokafka limit only: every request must get exactly one decision, and the
results file must carry the numbers the benchmark reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUESTS = 200
RATE = 250
SECONDS = 2


def test_limit_decides_every_request_exactly_once(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "pipeline.json"
    argv = ["--requests", str(REQUESTS), "--rate", str(RATE), "--seconds", str(SECONDS)]
    run = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", *argv, "--only", "a", "--output", str(output)],
        cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    report = json.loads(output.read_text())
    assert set(report) == {"config", "contenders", "skipped", "ratios"}
    assert report["config"]["requests"] == REQUESTS
    assert list(report["contenders"]) == ["limit"]
    limit = report["contenders"]["limit"]
    assert limit["stopped_by"] == "sigterm"
    for phase, requests in (("throughput", REQUESTS), ("latency", RATE * SECONDS)):
        result = limit[phase]
        assert result["requests"] == requests
        assert result["decisions"] == requests
        assert result["missing"] == 0
        assert result["duplicates"] == 0
    assert limit["throughput"]["decisions_per_s"] > 0
    assert limit["throughput"]["cpu_us_per_decision"] > 0
    assert 0 < limit["latency"]["p50_ms"] <= limit["latency"]["p99_ms"]
