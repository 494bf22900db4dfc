"""Where adstream finds its services: environment variables with local defaults.

The defaults match `docker-compose.yml` as seen from the host, so a user who runs the
compose file needs to set nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

import msgspec

DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "localhost:9092"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_WEB_PORT = 6066


class Settings(msgspec.Struct, frozen=True):
    kafka_bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    redis_url: str = DEFAULT_REDIS_URL
    web_port: int = DEFAULT_WEB_PORT

    # The environment variable each field is read from.
    ENV_NAMES: ClassVar[dict[str, str]] = {
        "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
        "redis_url": "REDIS_URL",
        "web_port": "ADSTREAM_WEB_PORT",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {
            field: environ[name] for field, name in cls.ENV_NAMES.items() if environ.get(name)
        }
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"bad environment setting: {exc}") from exc
