"""PostgreSQL migrations: versioned, run once under an advisory lock while others wait."""

from __future__ import annotations

import asyncio

import psycopg

from webhookd.store.postgres.migrate import migrate
from webhookd.store.postgres.schema import MIGRATIONS


async def _version(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT version FROM schema_version")
        rows = await cur.fetchall()
        assert len(rows) == 1
        return int(rows[0][0])


async def test_migrate_a_fresh_database(pg_empty_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_empty_dsn, autocommit=True) as conn:
        assert await migrate(conn) == len(MIGRATIONS)
        cur = await conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'deliveries_slot'"
        )
        row = await cur.fetchone()
        assert row is not None and "UNIQUE" in str(row[0]) and "delivering" in str(row[0])
        # Running again changes nothing.
        assert await migrate(conn) == len(MIGRATIONS)
    assert await _version(pg_empty_dsn) == len(MIGRATIONS)


async def test_daemons_starting_together_migrate_once(pg_empty_dsn: str) -> None:
    """Six migrators at once on an empty database: one applies the schema (a second run
    of a migration would fail on CREATE TABLE), the others wait for it and find it done."""

    async def one() -> int:
        async with await psycopg.AsyncConnection.connect(pg_empty_dsn, autocommit=True) as c:
            return await migrate(c)

    versions = await asyncio.gather(*[one() for _ in range(6)])
    assert versions == [len(MIGRATIONS)] * 6
    assert await _version(pg_empty_dsn) == len(MIGRATIONS)


async def test_migrators_wait_for_the_lock_holder(pg_empty_dsn: str) -> None:
    from webhookd.store.postgres.schema import MIGRATION_LOCK_KEY

    async with await psycopg.AsyncConnection.connect(pg_empty_dsn, autocommit=True) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))

        async def one() -> int:
            async with await psycopg.AsyncConnection.connect(pg_empty_dsn, autocommit=True) as c:
                return await migrate(c)

        waiting = asyncio.ensure_future(one())

        # The migrator is blocked on the lock: nothing of the schema exists yet.
        async def blocked() -> bool:
            cur = await holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            row = await cur.fetchone()
            return row is not None and int(row[0]) == 1

        from tests.conftest import wait_until

        await wait_until(blocked, 10, "the migrator to wait on the advisory lock")
        cur = await holder.execute("SELECT to_regclass('deliveries') IS NULL")
        row = await cur.fetchone()
        assert row is not None and row[0] is True
        await holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        assert await asyncio.wait_for(waiting, 20) == len(MIGRATIONS)


async def test_a_newer_schema_is_refused(pg_dsn: str) -> None:
    from webhookd.store.models import StorageError

    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute("UPDATE schema_version SET version = version + 1")
        try:
            await migrate(conn)
        except StorageError as exc:
            assert "newer than this webhookd understands" in str(exc)
        else:
            raise AssertionError("a newer schema was accepted")
