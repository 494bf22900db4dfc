"""The local launcher: clear failures, nothing left behind, `infra up/down/status`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import KafkaBroker, ensure_jars, jars_dir, metadata_answered
from infra.errors import JarDownloadError, PortInUse, PrerequisiteMissing, ServiceStartError
from infra.process import pid_alive
from infra.redis_server import RedisServer


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_kafka_port_taken_is_named(tmp_path: Path, taken_port: int) -> None:
    broker = KafkaBroker(data_dir=tmp_path / "data", log_dir=tmp_path / "logs", port=taken_port)
    with pytest.raises(PortInUse, match=f"Kafka: port {taken_port} on 127.0.0.1 is already in use"):
        broker.start()
    assert processes_mentioning(str(tmp_path)) == []


def test_redis_port_taken_is_named(tmp_path: Path, taken_port: int) -> None:
    server = RedisServer(data_dir=tmp_path / "data", log_dir=tmp_path / "logs", port=taken_port)
    with pytest.raises(PortInUse, match=f"Redis: port {taken_port}"):
        server.start()


def test_missing_java_says_what_to_install(tmp_path: Path) -> None:
    broker = KafkaBroker(data_dir=tmp_path, log_dir=tmp_path, java=str(tmp_path / "no-java"))
    with pytest.raises(PrerequisiteMissing, match="openjdk-17"):
        broker.start()


def test_missing_maven_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteMissing, match="apt-get install maven"):
        ensure_jars(mvn=str(tmp_path / "no-mvn"), cache=tmp_path)


def test_failed_jar_download_points_at_maven_log(tmp_path: Path) -> None:
    with pytest.raises(JarDownloadError, match="Maven Central") as failure:
        ensure_jars("0.0.0-no-such-version", cache=tmp_path)
    assert failure.value.log_path.is_file()
    assert "0.0.0-no-such-version" in failure.value.log_path.read_text()
    # Nothing half-downloaded may pass for a complete cache next time.
    assert not jars_dir("0.0.0-no-such-version", cache=tmp_path).exists()


def test_broker_that_dies_at_start_reports_its_log_and_leaves_nothing(tmp_path: Path) -> None:
    broker = KafkaBroker(
        data_dir=tmp_path / "data",
        log_dir=tmp_path / "logs",
        extra_config={"num.network.threads": "not-a-number"},
    )
    with pytest.raises(ServiceStartError) as failure:
        broker.start()
    message = str(failure.value)
    assert "Kafka failed to start" in message
    assert str(tmp_path / "logs") in message
    assert "num.network.threads" in message  # the log's tail shows the cause
    assert processes_mentioning(str(tmp_path)) == []


def adstream(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def test_infra_up_status_down(tmp_path: Path) -> None:
    env = {**os.environ, "ADSTREAM_RUN_DIR": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("REDIS_URL", None)
    started = adstream("infra", "up", env=env)
    try:
        assert started.returncode == 0, started.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
        )
        assert set(exports) == {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}
        pids = json.loads((tmp_path / "infra.json").read_text())["pids"]
        assert all(pid_alive(pid) for pid in pids)

        healthy = adstream("infra", "status", env=env)
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stderr.count("healthy") == 2

        again = adstream("infra", "up", env=env)
        assert again.returncode == 1
        assert "already running" in again.stderr
        assert exports["KAFKA_BOOTSTRAP_SERVERS"] in again.stderr
    finally:
        stopped = adstream("infra", "down", env=env)
    assert stopped.returncode == 0
    assert not any(pid_alive(pid) for pid in pids)
    assert not (tmp_path / "infra.json").exists()
    after = adstream("infra", "status", env=env)
    assert after.returncode == 1
    assert "not running" in after.stderr


def test_cluster_id_starting_with_a_dash_formats_and_starts(tmp_path: Path) -> None:
    # One id in 64 is like this; the storage tool once read it as an unknown option.
    broker = KafkaBroker(
        data_dir=tmp_path / "data", log_dir=tmp_path / "logs", cluster_id="-" + "A" * 21
    )
    broker.start()
    try:
        meta = (tmp_path / "data" / "log" / "meta.properties").read_text()
        assert f"cluster.id=-{'A' * 21}" in meta
    finally:
        broker.stop()
    assert processes_mentioning(str(tmp_path)) == []


def test_broker_restarts_on_its_own_data(tmp_path: Path) -> None:
    """stop() then start() again: the same ports and data, not a second format."""
    broker = KafkaBroker(data_dir=tmp_path / "data", log_dir=tmp_path / "logs")
    broker.start()
    try:
        port = broker.port
        broker.stop()
        broker.start()
        assert broker.port == port
        assert metadata_answered(broker.bootstrap_servers)
    finally:
        broker.stop()
