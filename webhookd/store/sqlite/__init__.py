"""The SQLite backend: the embedded default, one daemon per database file.

store.py is the `Store` (and the only module here the composition root names); writer.py
the group-commit writer that owns the one write connection and its thread; batches.py the
merged writes of a batch (publishes, outcomes); handoff.py the offers through which a
publish claims fresh deliveries for the dispatcher; rows.py rows to objects; migrations.py
the schema, versioned with PRAGMA user_version.
"""

from webhookd.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
