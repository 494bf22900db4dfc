"""adstream's event schema: the msgspec Structs that travel on the topics."""

from models.context import SessionContext, user_id_of, user_key

__all__ = ["SessionContext", "user_id_of", "user_key"]
