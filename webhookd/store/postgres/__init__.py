"""The PostgreSQL backend: the store several daemons share (see schema.py, migrate.py).

Imported only when the configured database is a PostgreSQL connection string, so that a
SQLite-only installation never loads psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from webhookd.store.postgres.store import PostgresStore

if TYPE_CHECKING:
    from webhookd.config import Config

__all__ = ["PostgresStore", "create"]

# Seconds past the request timeout before a claim's lease runs out (the contract's
# default cluster.lease_s is delivery.timeout_s + 60), and between heartbeats.
LEASE_MARGIN_S = 60.0
HEARTBEAT_S = 10.0


def create(config: Config) -> PostgresStore:
    """The store for `config.database` (not yet opened), for webhookd.store.open_store."""
    cluster = getattr(config, "cluster", None)
    lease_s = getattr(cluster, "lease_s", None) or config.delivery.timeout_s + LEASE_MARGIN_S
    heartbeat_s = getattr(cluster, "heartbeat_s", None) or HEARTBEAT_S
    return PostgresStore(
        config.database,
        lease_s=lease_s,
        heartbeat_s=heartbeat_s,
        default_limit=config.delivery.max_in_flight_per_endpoint,
    )
