"""Find or start the Kafka broker and Redis server that tests and benchmarks talk to.

Each service is taken, in order, from:
1. the address in the environment (`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`);
2. a testcontainers container, when a Docker engine answers;
3. the local launcher (`infra.stack`), which needs only Java, Maven and Debian's redis-server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from infra.broker import KAFKA_VERSION
from infra.process import free_port
from infra.stack import LocalStack

KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
REDIS_IMAGE = "redis:7"


class Services(msgspec.Struct, frozen=True):
    kafka_bootstrap_servers: str
    redis_url: str
    kafka_source: str
    redis_source: str
    # Set when the broker is ours to stop and restart (fault-injection tests need it).
    local: LocalStack | None = None


def docker_available() -> bool:
    try:
        import docker  # optional: comes with testcontainers

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


# testcontainers is a test-only dependency: imported only when a Docker engine answers.
def _kafka_container(stack: contextlib.ExitStack) -> str:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    # The advertised listener must carry the host port, so it is chosen before the start.
    port = free_port()
    container: Any = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
    )
    stack.enter_context(container)
    wait_for_logs(container, "Kafka Server started", timeout=120)
    return f"127.0.0.1:{port}"


def _redis_container(stack: contextlib.ExitStack) -> str:
    from testcontainers.redis import RedisContainer

    container: Any = stack.enter_context(RedisContainer(REDIS_IMAGE))
    host = container.get_container_host_ip()
    return f"redis://{host}:{container.get_exposed_port(6379)}/0"


@contextlib.contextmanager
def provide_services(root: Path | None = None) -> Iterator[Services]:
    """Yield the addresses of a Kafka broker and a Redis server, stopping what it started."""
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("REDIS_URL")
    sources = {"kafka": "environment", "redis": "environment"}
    with contextlib.ExitStack() as stack:
        local: LocalStack | None = None
        if (kafka is None or redis_url is None) and docker_available():
            if kafka is None:
                kafka, sources["kafka"] = _kafka_container(stack), "testcontainers"
            if redis_url is None:
                redis_url, sources["redis"] = _redis_container(stack), "testcontainers"
        if kafka is None or redis_url is None:
            local = LocalStack.create(root)
            stack.callback(local.stop)
            if kafka is None:
                local.kafka.start()
                kafka, sources["kafka"] = local.kafka.bootstrap_servers, "local launcher"
            if redis_url is None:
                local.redis.start()
                redis_url, sources["redis"] = local.redis.url, "local launcher"
        yield Services(kafka, redis_url, sources["kafka"], sources["redis"], local)
