"""Storage: the outbox of events, endpoints, deliveries and attempts.

Every module sees a store through `webhookd.store.interface.Store`; `open_store` is where
the composition root (daemon.py) gets one for `config.database`: a PostgreSQL connection
string goes to webhookd.store.postgres, anything else is a SQLite file. Both backends are
imported only when chosen, so a SQLite installation never loads psycopg.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from webhookd.store.models import StorageError

if TYPE_CHECKING:
    from webhookd.config import Config
    from webhookd.store.interface import Store

# libpq's connection keywords: a `key=value ...` string starting with one of them is a
# PostgreSQL connection string, not a file name.
_LIBPQ_KEYWORDS = (
    "host|hostaddr|port|dbname|user|password|passfile|service|sslmode|sslrootcert|"
    "sslcert|sslkey|connect_timeout|application_name|options|target_session_attrs"
)
_KEY_VALUE = re.compile(rf"^\s*({_LIBPQ_KEYWORDS})\s*=")


def is_postgres(database: str) -> bool:
    """Whether `database` names a PostgreSQL database: a postgresql:// or postgres://
    URI, or a libpq key=value string (`host=db dbname=webhookd`)."""
    lowered = database.lower()
    return lowered.startswith(("postgresql://", "postgres://")) or bool(_KEY_VALUE.match(database))


def open_store(config: Config) -> Store:
    """The backend for `config.database`, not yet opened (`await store.open()`).

    The PostgreSQL package provides `create(config) -> Store`; StorageError (a startup
    failure that names the cause) if it is missing or cannot be loaded."""
    if not is_postgres(config.database):
        from webhookd.store.sqlite import SQLiteStore

        return SQLiteStore(config.database)
    try:
        backend = importlib.import_module("webhookd.store.postgres")
    except ImportError as exc:
        raise StorageError(f"database: the PostgreSQL backend cannot be loaded ({exc})") from None
    create = getattr(backend, "create", None)
    if create is None:
        raise StorageError(
            "database: this webhookd has no PostgreSQL backend yet; "
            "use a SQLite file path (the default is ./webhookd.db)"
        )
    store: Store = create(config)
    return store
