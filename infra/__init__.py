"""Local infrastructure: a real single-node Kafka broker and a Redis server on loopback."""
