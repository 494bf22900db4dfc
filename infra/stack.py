"""The local stack: one Kafka broker and one Redis server, started and stopped together.

`LocalStack` is the Python API the tests use. `up()`, `down()` and `status()` back the
`adstream infra` commands: they keep a state file so that services started by one
command can be found and stopped by another.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from infra.broker import KafkaBroker, cache_root
from infra.errors import AlreadyRunning
from infra.process import pid_alive, terminate
from infra.redis_server import RedisServer


@dataclass
class LocalStack:
    root: Path
    kafka: KafkaBroker
    redis: RedisServer

    @classmethod
    def create(cls, root: Path | None = None) -> LocalStack:
        """A stack with fresh data directories under `root` (a new temporary folder by default)."""
        root = root or Path(tempfile.mkdtemp(prefix="adstream-infra-"))
        logs = root / "logs"
        return cls(
            root=root,
            kafka=KafkaBroker(data_dir=root / "data" / "kafka", log_dir=logs),
            redis=RedisServer(data_dir=root / "data" / "redis", log_dir=logs),
        )

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def addresses(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "REDIS_URL": self.redis.url,
        }

    def start(self) -> None:
        """Start both services; if either fails, nothing is left running."""
        try:
            self.redis.start()
            self.kafka.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both services and delete their data; the logs stay for a post-mortem."""
        self.kafka.stop()
        self.redis.stop()
        shutil.rmtree(self.root / "data", ignore_errors=True)

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def state_file() -> Path:
    run_dir = os.environ.get("ADSTREAM_RUN_DIR")
    return (Path(run_dir) if run_dir else cache_root() / "run") / "infra.json"


def _read_state() -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    return state


def _pids(state: dict[str, object]) -> list[int]:
    pids = state.get("pids", [])
    return [pid for pid in pids if isinstance(pid, int)] if isinstance(pids, list) else []


def status() -> dict[str, object] | None:
    """The state of a stack started by `up()` whose processes are all alive, else None."""
    state = _read_state()
    if state is None:
        return None
    pids = _pids(state)
    return state if pids and all(pid_alive(pid) for pid in pids) else None


def up() -> LocalStack:
    """Start a stack in the background and record it; refuse if one is already running."""
    running = status()
    if running is not None:
        addresses = running.get("addresses", {})
        raise AlreadyRunning(state_file(), addresses if isinstance(addresses, dict) else {})
    down()  # a stale record of a half-dead stack: clear it before starting afresh
    run_dir = state_file().parent
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack.create(
        Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=run_dir))
    )
    stack.start()
    state = {
        "addresses": stack.addresses(),
        "pids": [stack.kafka.pid, stack.redis.pid],
        "root": str(stack.root),
        "logs": str(stack.log_dir),
    }
    state_file().write_text(json.dumps(state, indent=2))
    return stack


def down() -> dict[str, object] | None:
    """Stop a stack started by `up()` (SIGTERM, wait, SIGKILL); its logs are kept."""
    state = _read_state()
    if state is None:
        return None
    for pid in _pids(state):
        terminate(pid)
    root = state.get("root")
    if isinstance(root, str):
        shutil.rmtree(Path(root) / "data", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        state_file().unlink()
    return state
