"""A real `redis-server` on loopback, installed from Debian packages when missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import redis

from infra.debian_packages import find_or_install
from infra.process import LOOPBACK, ServiceProcess, ensure_port_free, free_port


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
        binary = find_or_install("redis-server", "redis-server", self.log_dir)
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
