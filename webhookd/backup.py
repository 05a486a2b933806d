"""`webhookd backup`: an online, consistent copy of the SQLite database, private to its owner.

SQLite's online backup API copies the database page by page under a read transaction, so
the copy is consistent while the daemon keeps publishing and delivering (WAL readers do
not block its writer). The copy holds every endpoint secret: it is created with mode 0600
from the start (never chmod-ed afterwards, which would leave a window), written next to
its destination and renamed into place once complete, so DEST is never half a database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

PRIVATE_MODE = 0o600


class BackupError(Exception):
    """A backup that cannot be made, with the one sentence saying why."""


def is_postgres(database: str) -> bool:
    """A libpq URI or key/value string rather than a file path."""
    text = database.strip()
    return text.startswith(("postgresql://", "postgres://")) or (
        "=" in text and any(part.startswith("dbname=") for part in text.split())
    )


def backup(source: str, dest: str, *, force: bool = False) -> int:
    """Copy the database at `source` to `dest` (mode 0600); the size written, in bytes."""
    if is_postgres(source):
        raise BackupError(
            "the database is PostgreSQL: back it up with pg_dump (e.g. `pg_dump -Fc -f "
            'webhookd.dump "$DATABASE_URL"`); this command copies SQLite files only'
        )
    if not Path(source).is_file():
        raise BackupError(f"no database at {source}")
    target = Path(dest)
    if target.is_dir():
        raise BackupError(f"{dest} is a directory; give the backup file's name")
    if target.exists() and not force:
        raise BackupError(f"{dest} exists; add --force to replace it")
    try:
        # mkstemp creates the file with mode 0600; SQLite gives its journal the same.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise BackupError(f"cannot write in {target.parent}: {exc.strerror}") from None
    os.close(fd)
    try:
        _copy(source, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise BackupError(f"cannot write {dest}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target.stat().st_size


def _copy(source: str, tmp: str) -> None:
    try:
        src = sqlite3.connect(f"file:{Path(source).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source}: {exc}") from None
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            # A copy in WAL mode would need its -wal file beside it; a backup is one file.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
