"""The PostgreSQL backend: the store several daemons share (see schema.py, migrate.py).

Imported only when the configured database is a postgresql:// URI, so that a SQLite-only
installation never loads psycopg.
"""

from webhookd.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
