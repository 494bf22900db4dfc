"""docker-compose.yml cannot run here (no Docker engine), so its agreement with the code
is checked by reading it: images, ports and environment against the code's defaults, the
Kafka settings against what the apache/kafka image documents (apache_kafka_image.yaml, with
its sources), and the worker's healthcheck command run against a real HTTP server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from aiohttp import web

from infra.broker import KAFKA_VERSION
from infra.provision import REDIS_IMAGE
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
IMAGE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "apache_kafka_image.yaml").read_text()
)


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


def kafka_property(variable: str) -> str:
    """The server.properties key an apache/kafka variable sets: the image's documented
    rule (. -> _, _ -> __, - -> ___, prefix KAFKA_) read backwards."""
    name = variable.removeprefix(IMAGE["property_prefix"]).lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def listener_ports(listeners: str) -> dict[str, int]:
    """NAME://host:port,... -> name -> port"""
    pairs = (listener.split("://") for listener in listeners.split(","))
    return {name: int(address.rsplit(":", 1)[1]) for name, address in pairs}


def test_kafka_property_names_follow_the_documented_rule() -> None:
    assert kafka_property("KAFKA_LOG_DIRS") == "log.dirs"
    assert kafka_property("KAFKA_ABC___DEF") == "abc-def"
    assert kafka_property("KAFKA_ABC__DEF") == "abc_def"
    assert kafka_property("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR") == (
        "transaction.state.log.min.isr"
    )


def test_kafka_sets_only_documented_variables_and_every_default_it_needs() -> None:
    env = compose()["services"]["kafka"]["environment"]
    documented = set(IMAGE["defaults_when_unset"]) | set(IMAGE["not_properties"])
    assert set(env) <= documented, set(env) - documented
    # A default left to the image would be a surprise (the data directory was one); only
    # the cluster id may stay the image's.
    assert set(IMAGE["defaults_when_unset"]) - set(env) == {"CLUSTER_ID"}


def test_kafka_keeps_its_data_on_the_mounted_volume() -> None:
    kafka = compose()["services"]["kafka"]
    mounts = dict(str(volume).split(":")[::-1] for volume in kafka["volumes"])
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"].split(",")
    assert log_dirs == [IMAGE["data_volume"]]
    assert IMAGE["data_volume"] in IMAGE["volumes"]
    assert IMAGE["defaults_when_unset"]["KAFKA_LOG_DIRS"] not in log_dirs
    named = mounts[IMAGE["data_volume"]]
    assert named in compose()["volumes"], "a named volume, which outlives the container"


def test_kafka_listeners_agree_with_each_other() -> None:
    env = compose()["services"]["kafka"]["environment"]
    listeners = listener_ports(env["KAFKA_LISTENERS"])
    protocols = dict(
        pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) == set(protocols)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    advertised = listener_ports(env["KAFKA_ADVERTISED_LISTENERS"])
    assert controller not in advertised
    assert all(listeners[name] == port for name, port in advertised.items())
    (voter,) = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    node_id, address = voter.split("@")
    assert node_id == str(env["KAFKA_NODE_ID"])
    assert address == f"kafka:{listeners[controller]}"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for variable in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[variable] == "1", f"{kafka_property(variable)}: a single node"


async def run_healthcheck(argv: list[str], port: int) -> int:
    assert argv[0] == "CMD" and argv[1] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv[2:],
        env={**os.environ, "ADSTREAM_WEB_PORT": str(port)},
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30)


async def test_the_worker_is_healthy_once_ready_answers_200() -> None:
    worker = compose()["services"]["worker"]
    argv = [str(part) for part in worker["healthcheck"]["test"]]
    assert "ADSTREAM_WEB_PORT" in worker["environment"]
    assert worker["command"] == ["adstream", "worker"]
    ready = {"status": 503}
    asked: list[str] = []

    async def ready_page(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"ready": ready["status"] == 200}, status=ready["status"])

    app = web.Application()
    app.router.add_get("/adstream/ready/", ready_page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        assert await run_healthcheck(argv, port) != 0
        ready["status"] = 200
        assert await run_healthcheck(argv, port) == 0
    finally:
        await runner.cleanup()
    assert asked == ["/adstream/ready/"] * 2
    assert await run_healthcheck(argv, port) != 0  # nothing listens any more
