"""Connections to PostgreSQL: one psycopg_pool pool per store, and the translation of
driver errors into the store's own (StorageError: the database cannot be reached or
written; the API answers 503 and the dispatcher retries)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import psycopg_pool

from webhookd.store.models import StorageError

# Connections of one daemon's pool: the API's requests and the dispatcher share them;
# each request holds one only for its statements.
POOL_MIN = 1
POOL_MAX = 10
# How long a caller waits for a free connection (or a new one) before the store says it
# cannot work now: long enough for a burst, short enough for readiness to answer.
ACQUIRE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5

Conn = psycopg.AsyncConnection[Any]

# Errors that say the database cannot do the work now (connection lost, shut down, disk
# full, read-only replica, out of connections), as opposed to a bug in a statement.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.InternalError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
)


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StorageError(f"storage cannot write: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class Database:
    """The pool; every connection in it is in autocommit mode, so a statement outside
    `transaction()` is its own transaction."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: psycopg_pool.AsyncConnectionPool[Conn] | None = None

    async def open(self) -> None:
        pool: psycopg_pool.AsyncConnectionPool[Conn] = psycopg_pool.AsyncConnectionPool(
            self.dsn,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            open=False,
            name="webhookd",
            timeout=ACQUIRE_TIMEOUT_S,
        )
        try:
            with storage_errors():
                await pool.open(wait=True, timeout=ACQUIRE_TIMEOUT_S * 2)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def connect(self) -> Conn:
        """A connection of its own, outside the pool (migrations, LISTEN)."""
        with storage_errors():
            return await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise StorageError("the store is closed")
        with storage_errors():
            async with self._pool.connection() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self.connection() as conn, conn.transaction():
            yield conn
