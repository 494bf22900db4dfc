"""adstream's event schema: the msgspec Structs that travel on the topics."""
