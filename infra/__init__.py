"""Local infrastructure: a real single-node Kafka broker and a Redis server on loopback."""

from infra.broker import KafkaBroker
from infra.errors import InfraError
from infra.provision import Services, provide_services
from infra.redis_server import RedisServer

__all__ = [
    "InfraError",
    "KafkaBroker",
    "RedisServer",
    "Services",
    "provide_services",
]
