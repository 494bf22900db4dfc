"""Headless Chromium from Debian's `chromium` package (installed when missing, see
`infra.debian_packages`): a page rendered with its scripts run, and what it logged."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import msgspec

from infra.debian_packages import find_or_install


class Rendered(msgspec.Struct, frozen=True):
    dom: str
    """The document after its scripts ran for the time given."""
    console: list[str]
    """Every line the page wrote to the browser's console (errors, uncaught exceptions,
    resources that failed to load, and logs alike)."""


def render(url: str, work_dir: Path, run_ms: int = 3000) -> Rendered:
    """Load `url` in a fresh headless Chromium, let its scripts run `run_ms` of virtual time
    (network loads included), and return the DOM."""
    binary = find_or_install("chromium", "chromium", work_dir)
    argv = [
        binary,
        "--headless",
        "--disable-gpu",
        f"--user-data-dir={work_dir / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--virtual-time-budget={run_ms}",
        "--dump-dom",
        url,
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}")
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(done.stdout, console)
