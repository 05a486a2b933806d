"""Storage: the outbox of events, endpoints, deliveries and attempts."""

from webhookd.store.models import Conflict, NotFound, StorageError
from webhookd.store.sqlite import BadCursor, SQLiteStore

__all__ = ["BadCursor", "Conflict", "NotFound", "SQLiteStore", "StorageError"]
