"""docker-compose.yml cannot run here (no Docker engine), so its agreement with the code
is checked by reading it: images, ports and environment against the code's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from infra.broker import KAFKA_VERSION
from infra.provision import REDIS_IMAGE
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port"""
    pairs = (str(spec).split(":") for spec in service.get("ports", []))
    return {int(container): int(host) for host, container in pairs}


def test_services_present() -> None:
    assert set(compose()["services"]) == {"kafka", "redis", "worker"}


def test_kafka_image_matches_the_launcher_version() -> None:
    image = compose()["services"]["kafka"]["image"]
    assert image == f"apache/kafka:{KAFKA_VERSION}"
    assert compose()["services"]["redis"]["image"] == REDIS_IMAGE


def test_host_ports_match_the_default_settings() -> None:
    services = compose()["services"]
    defaults = Settings()
    kafka_port = int(defaults.kafka_bootstrap_servers.rsplit(":", 1)[1])
    assert kafka_port in published(services["kafka"]).values()
    env = services["kafka"]["environment"]
    assert f"localhost:{kafka_port}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert urlsplit(defaults.redis_url).port in published(services["redis"]).values()
    assert published(services["worker"]) == {defaults.web_port: defaults.web_port}


def test_worker_environment_is_what_the_code_reads() -> None:
    services = compose()["services"]
    env = services["worker"]["environment"]
    assert set(env) <= set(Settings.ENV_NAMES.values())
    settings = Settings.from_env({name: str(value) for name, value in env.items()})
    # The worker reaches Kafka through the listener advertised to the compose network.
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(a.endswith(f"//{settings.kafka_bootstrap_servers}") for a in advertised)
    redis = urlsplit(settings.redis_url)
    assert redis.hostname in services
    assert redis.port in published(services["redis"])
    assert settings.web_port in published(services["worker"])
    assert set(services["worker"]["depends_on"]) == {"kafka", "redis"}
