"""A real `redis-server` on loopback, installed from Debian packages when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from infra.errors import PrerequisiteMissing
from infra.process import LOOPBACK, ServiceProcess, ensure_port_free, free_port

INSTALL_HINT = "install it, e.g. `apt-get install redis-server`"


def find_or_install_redis_server(log_dir: Path) -> str:
    """The path of `redis-server`; as root with apt-get, installs the Debian package first."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise PrerequisiteMissing("redis-server", INSTALL_HINT)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "apt-redis.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log_path.open("w") as log:
        for argv in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "redis-server"]):
            subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    found = shutil.which("redis-server")
    if found is None:
        raise PrerequisiteMissing("redis-server", f"{INSTALL_HINT} (apt-get's output: {log_path})")
    return found


def redis_answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class RedisServer:
    """A throwaway Redis: no persistence, bound to 127.0.0.1 only."""

    data_dir: Path
    log_dir: Path
    port: int = 0
    start_timeout_s: float = 20.0
    _process: ServiceProcess | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "redis.log"

    def start(self) -> None:
        binary = find_or_install_redis_server(self.log_dir)
        if self.port == 0:
            self.port = free_port()
        ensure_port_free("Redis", self.port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = ServiceProcess(
            "Redis",
            [
                binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.data_dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
            ],
            self.log_path,
        )  # fmt: skip
        self._process.start()
        self._process.wait_ready(lambda: redis_answers(self.url), self.start_timeout_s)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
