"""A real Prometheus on loopback, and its `promtool`: Debian's `prometheus` package, installed
when missing (`infra.debian_packages`)."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra.debian_packages import find_or_install
from infra.process import LOOPBACK, ServiceProcess, ensure_port_free, free_port

PACKAGE = "prometheus"


class PromtoolFailed(Exception):
    """promtool found a problem; the message holds its output."""


def promtool(args: Sequence[str], log_dir: Path, cwd: Path | None = None) -> str:
    """Run `promtool` with `args`; its output (stdout and stderr). Raises `PromtoolFailed`
    with that output when it exits non-zero (a rule or test that does not pass)."""
    binary = find_or_install("promtool", PACKAGE, log_dir)
    done = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise PromtoolFailed(f"promtool {' '.join(args)} exited {done.returncode}:\n{output}")
    return output


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class PrometheusServer:
    """A throwaway Prometheus reading `config`, its data in `data_dir`, bound to 127.0.0.1."""

    config: Path
    data_dir: Path
    log_dir: Path
    port: int = 0
    start_timeout_s: float = 30.0
    _process: ServiceProcess | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "prometheus.log"

    def start(self) -> None:
        binary = find_or_install("prometheus", PACKAGE, self.log_dir)
        if self.port == 0:
            self.port = free_port()
        ensure_port_free("Prometheus", self.port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = ServiceProcess(
            "Prometheus",
            [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
            ],
            self.log_path,
        )
        self._process.start()
        self._process.wait_ready(lambda: _answers(f"{self.url}/-/ready"), self.start_timeout_s)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
