"""Where adstream finds its services and how its worker runs: environment variables with
local defaults.

The service defaults match `docker-compose.yml` as seen from the host, so a user who runs the
compose file needs to set nothing.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal, get_args, get_type_hints
from urllib.parse import urlsplit

import msgspec

from streams.vast.parse import DEFAULT_MAX_ADS
from streams.vast.upstream import DEFAULT_MAX_FETCHES

DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "localhost:9092"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_WEB_PORT = 6066
DEFAULT_IMPRESSION_HISTORY_S = 7 * 86_400
REDIS_SCHEMES = ("redis", "rediss", "unix")

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(msgspec.Struct, frozen=True):
    kafka_bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    redis_url: str = DEFAULT_REDIS_URL
    """Empty string: run without the Redis lookaside."""
    web_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = DEFAULT_WEB_PORT
    web_bind: str = "0.0.0.0"
    """Where the web port (metrics, table routes) listens."""
    web_host: str = "127.0.0.1"
    """How other workers reach this one's web port (the lookaside's fallback is routed)."""
    app_id: str = "adstream"
    """Names the deployment's consumer group and internal topics (`group_id`)."""
    topic_prefix: str = ""
    """Put before every name the worker uses on the cluster, so that several deployments (or
    tests) share a broker."""
    partitions: Annotated[int, msgspec.Meta(ge=1)] = 8
    """Partitions of the topics the worker creates when they are missing."""
    data_dir: str = "/var/lib/adstream"
    store: Literal["rocksdb", "memory"] = "rocksdb"
    commit_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 0.05
    """How often decisions become visible: each commit ends a Kafka transaction."""
    behind_commit_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 0.25
    """How often while the worker is behind (more than a batch of requests waiting): each
    commit costs a few broker round trips per partition, CPU the backlog needs, and queued
    requests wait longer than this for their turn anyway."""
    fetch_wait_ms: Annotated[int, msgspec.Meta(ge=0)] = 10
    """How long the broker may hold a fetch open for more data (Faust ships 1500)."""
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 500
    batch_wait_s: Annotated[float, msgspec.Meta(ge=0)] = 0.005
    hop_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    chain_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    max_fetches: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_FETCHES
    """Upstream GETs one ad request may cause, across its wrapper chain and every fallback ad,
    retries included; past it, resolution stops (302)."""
    max_ads_per_document: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_ADS
    """Ads one VAST document may hold, pod and stand-alone ads together; a larger one is
    refused (101)."""
    breaker_timeouts: Annotated[int, msgspec.Meta(ge=0)] = 5
    """Timeouts in a row after which an upstream endpoint (its URL without the query) is
    failed at once (301) for a cooldown, so that one slow ad server does not slow every
    batch; 0 turns this off."""
    breaker_cooldown_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    breaker_min_failing_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    """How long the timeouts in a row must have lasted: one stall of an upstream times out
    every request then in flight at once, and should not shut it for a cooldown."""
    standby_replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    gc_freeze: bool = True
    """Once ready, exempt everything alive from garbage collection (`streams.worker.collector`)."""
    gc_gen0: Annotated[int, msgspec.Meta(ge=1)] | None = 50_000
    """The garbage collector's youngest-generation threshold (Python's own is 700)."""
    instance_id: str = ""
    """The worker's static group membership (Kafka's `group.instance.id`, KIP-345), unique
    per worker and kept across its restarts: restarted within the session timeout, it takes
    its own partitions back without a rebalance. Empty: a new member at every start."""
    stall_warning_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """A partition with requests waiting and no commit for this long is logged as stalled."""
    block_private_addresses: bool = False
    """The SSRF guard: upstream URLs may reach only global addresses (and `allowed_networks`)."""
    allowed_networks: str = ""
    """Comma-separated networks the SSRF guard lets through anyway (an internal ad server)."""
    impression_history_s: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_IMPRESSION_HISTORY_S
    """How long (event time) every served impression of an identified user is kept for its
    (user, campaign), whatever the campaign's caps: a cap added or a window lengthened by a
    later update counts what was served within it. A campaign's longest cap window, if
    longer, is kept instead; a window longer than this counts only this much of what was
    served before the cap was added or lengthened."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """uvloop costs the worker less CPU per decision; asyncio's own loop is the fallback."""
    log_level: LogLevel = "info"
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """How long the commands wait for an unreachable Kafka broker before giving up."""

    # The environment variable each field is read from.
    ENV_NAMES: ClassVar[dict[str, str]] = {
        "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
        "redis_url": "REDIS_URL",
        "web_port": "ADSTREAM_WEB_PORT",
        "web_bind": "ADSTREAM_WEB_BIND",
        "web_host": "ADSTREAM_WEB_HOST",
        "app_id": "ADSTREAM_APP_ID",
        "topic_prefix": "ADSTREAM_TOPIC_PREFIX",
        "partitions": "ADSTREAM_PARTITIONS",
        "data_dir": "ADSTREAM_DATA_DIR",
        "store": "ADSTREAM_STORE",
        "commit_interval_s": "ADSTREAM_COMMIT_INTERVAL_S",
        "behind_commit_interval_s": "ADSTREAM_BEHIND_COMMIT_INTERVAL_S",
        "fetch_wait_ms": "ADSTREAM_FETCH_WAIT_MS",
        "batch_size": "ADSTREAM_BATCH_SIZE",
        "batch_wait_s": "ADSTREAM_BATCH_WAIT_S",
        "hop_timeout_s": "ADSTREAM_HOP_TIMEOUT_S",
        "chain_timeout_s": "ADSTREAM_CHAIN_TIMEOUT_S",
        "max_fetches": "ADSTREAM_MAX_FETCHES",
        "max_ads_per_document": "ADSTREAM_MAX_ADS_PER_DOCUMENT",
        "breaker_timeouts": "ADSTREAM_BREAKER_TIMEOUTS",
        "breaker_cooldown_s": "ADSTREAM_BREAKER_COOLDOWN_S",
        "breaker_min_failing_s": "ADSTREAM_BREAKER_MIN_FAILING_S",
        "standby_replicas": "ADSTREAM_STANDBY_REPLICAS",
        "gc_freeze": "ADSTREAM_GC_FREEZE",
        "gc_gen0": "ADSTREAM_GC_GEN0",
        "instance_id": "ADSTREAM_INSTANCE_ID",
        "stall_warning_s": "ADSTREAM_STALL_WARNING_S",
        "block_private_addresses": "ADSTREAM_BLOCK_PRIVATE_ADDRESSES",
        "allowed_networks": "ADSTREAM_ALLOWED_NETWORKS",
        "impression_history_s": "ADSTREAM_IMPRESSION_HISTORY_S",
        "event_loop": "ADSTREAM_EVENT_LOOP",
        "log_level": "ADSTREAM_LOG_LEVEL",
        "connect_timeout_s": "ADSTREAM_CONNECT_TIMEOUT_S",
    }

    def __post_init__(self) -> None:
        # A typo fails at start-up rather than as fetches refused later.
        for network in self.allowed_network_list:
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ValueError(f"allowed_networks: {exc}") from None
        if self.redis_url and urlsplit(self.redis_url).scheme not in REDIS_SCHEMES:
            raise ValueError(
                "redis_url: not a Redis URL (redis://host:port/db, "
                "rediss://..., unix://...; empty for none)"
            )
        for address in self.kafka_bootstrap_servers.split(","):
            # As aiokafka reads it: the port is 9092 when none is given.
            host, colon, port = address.strip().rpartition(":")
            if not colon:
                host, port = port, "9092"
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"kafka_bootstrap_servers: {address!r} is not host:port "
                    "(several are separated by commas)"
                )

    @property
    def allowed_network_list(self) -> list[str]:
        return split_networks(self.allowed_networks)

    @property
    def group_id(self) -> str:
        """The consumer group, and Faust's app id: the start of every internal topic name
        (changelogs, Faust's assignor topic) and transactional id."""
        return f"{self.topic_prefix}{self.app_id}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives; a bad value raises `BadSetting` naming its
        variable."""
        environ = os.environ if environ is None else environ
        values = {
            field: environ[name] for field, name in cls.ENV_NAMES.items() if environ.get(name)
        }
        if "log_level" in values:  # INFO as well as info, like the logging module
            values["log_level"] = values["log_level"].lower()
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise BadSetting.of(str(exc), environ) from None

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings (for child processes); a setting
        without a value (None) is left unset."""
        values = {name: getattr(self, field) for field, name in self.ENV_NAMES.items()}
        return {name: str(value) for name, value in values.items() if value is not None}


class BadSetting(ValueError):
    """An environment variable whose value adstream cannot use; the message names it."""

    @classmethod
    def of(cls, problem: str, environ: Mapping[str, str]) -> BadSetting:
        """From msgspec's "... - at `$.field`" or a check's "field: ...", the same problem
        told by the variable's name and value, with the choices when there are few."""
        field = ""
        if match := re.search(r" - at `\$\.(\w+)`$", problem):
            field, problem = match.group(1), problem[: match.start()]
        elif match := re.match(r"(\w+): ", problem):
            field, problem = match.group(1), problem[match.end() :]
        name = Settings.ENV_NAMES.get(field)
        if name is None:
            return cls(f"bad setting: {problem}")
        choices = get_args(get_type_hints(Settings)[field])
        if choices and all(isinstance(choice, str) for choice in choices):
            problem += f" (one of {', '.join(choices)})"
        return cls(f"bad setting {name}={environ.get(name, '')!r}: {problem}")


def split_networks(text: str) -> list[str]:
    """The networks of a comma-separated list, as `allowed_networks` holds them."""
    return [network.strip() for network in text.split(",") if network.strip()]
