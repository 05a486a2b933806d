"""Bringing a PostgreSQL database to the schema this webhookd knows.

Runs on one connection of its own, under a session-level advisory lock: the first daemon
to start migrates, daemons starting at the same time wait on the lock and then find the
schema current. Each migration commits with its version number, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

from typing import Any

import psycopg

from webhookd.store.models import StorageError
from webhookd.store.postgres.schema import MIGRATION_LOCK_KEY, MIGRATIONS

# PostgreSQL 13 is the oldest the contract promises (gen_random_uuid, partial index
# predicates the claims rely on).
MIN_SERVER_VERSION = 130000


async def migrate(conn: psycopg.AsyncConnection[Any]) -> int:
    """Apply every missing migration; returns the version the database is at.

    `conn` must be in autocommit mode: the lock is held across transactions."""
    if conn.info.server_version < MIN_SERVER_VERSION:
        raise StorageError(
            f"PostgreSQL {conn.info.server_version // 10000} is too old: webhookd needs 13 or newer"
        )
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        version = await _version(conn)
        if version > len(MIGRATIONS):
            raise StorageError(
                f"the database has schema version {version}, newer than this webhookd "
                f"understands ({len(MIGRATIONS)}); upgrade webhookd"
            )
        for i in range(version, len(MIGRATIONS)):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[i].encode())
                await conn.execute("UPDATE schema_version SET version = %s", (i + 1,))
        return len(MIGRATIONS)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


async def _version(conn: psycopg.AsyncConnection[Any]) -> int:
    async with conn.transaction():
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        cur = await conn.execute("SELECT version FROM schema_version")
        row = await cur.fetchone()
        if row is None:
            await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            return 0
        return int(row[0])
