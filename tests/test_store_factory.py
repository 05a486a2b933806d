"""The composition root's choice of backend: webhookd.store.open_store."""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from webhookd.config import Config
from webhookd.store import is_postgres, open_store
from webhookd.store.interface import StorageError, Store
from webhookd.store.sqlite import SQLiteStore


@pytest.mark.parametrize(
    "database",
    [
        "postgresql://webhookd@db.internal/webhookd",
        "postgres://u:p@127.0.0.1:5432/w?sslmode=disable",
        "PostgreSQL://db/w",
        "host=db dbname=webhookd",
        "  dbname=webhookd user=w",
        "service=webhookd",
    ],
)
def test_postgres_connection_strings_are_recognised(database: str) -> None:
    assert is_postgres(database)


@pytest.mark.parametrize(
    "database",
    ["./webhookd.db", "/var/lib/webhookd/webhookd.db", "db=1.sqlite", "postgresql.db", "x"],
)
def test_anything_else_is_a_sqlite_file(database: str) -> None:
    assert not is_postgres(database)


async def test_a_path_opens_the_sqlite_backend(tmp_path: Path) -> None:
    store: Store = open_store(replace(Config(), database=str(tmp_path / "w.db")))
    assert isinstance(store, SQLiteStore)
    await store.open()
    try:
        assert await store.write_problem() is None
    finally:
        await store.close()
    assert (tmp_path / "w.db").exists()


def test_a_postgres_uri_without_the_backend_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A package that does not (yet) provide create(config): the startup error says so.
    monkeypatch.setitem(sys.modules, "webhookd.store.postgres", types.ModuleType("empty"))
    with pytest.raises(StorageError, match="no PostgreSQL backend"):
        open_store(replace(Config(), database="postgresql://db/webhookd"))
