"""The daemon-side commands as real processes: bare `webhookd`, `serve --listen`,
`webhookd backup` of a running daemon's database."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import Daemon, wait_until
from tests.test_cli_client import free_port
from webhookd.backup import BackupError, backup


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhookd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bare_webhookd_prints_usage_and_exits_2(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: webhookd")
    assert "serve" in result.stderr and "backup" in result.stderr


async def test_serve_listen_overrides_the_config(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "w.yaml"
    config.write_text(yaml.safe_dump({"listen": "127.0.0.1:1", "database": "w.db"}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhookd",
            "serve",
            "-c",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def ready() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{port}/readyz") as r,
                ):
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, 20, "the daemon on --listen's port")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_listen_is_checked_like_the_config(tmp_path: Path) -> None:
    result = run("serve", "--listen", "nonsense", cwd=tmp_path)
    assert result.returncode == 78
    assert "--listen: expected HOST:PORT" in result.stderr
    # Not loopback and no API keys: refused, as the same address in the file would be.
    result = run("serve", "--listen", "0.0.0.0:0", cwd=tmp_path)
    assert result.returncode == 78
    assert "listen: 0.0.0.0:0 is not a loopback address and no api_keys" in result.stderr
    assert not (tmp_path / "webhookd.db").exists()


async def test_backup_of_a_running_daemon(daemon: Daemon, receiver: Any, tmp_path: Path) -> None:
    ep = await daemon.endpoint(receiver.url)
    for n in range(20):
        await daemon.publish("call.completed", {"n": n})
    dest = tmp_path / "backups" / "webhookd-backup.db"
    dest.parent.mkdir()
    old_umask = os.umask(0o022)  # what a shell usually has: new files 0644
    try:
        result = run("backup", "-c", str(daemon.config_path), str(dest), cwd=tmp_path)
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"backed up {daemon.config['database']} to {dest}")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # one file, no -wal
    copy = sqlite3.connect(dest)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT count(*) FROM events").fetchone() == (20,)
        secrets = [row[0] for row in copy.execute("SELECT id FROM endpoints")]
        assert secrets == [ep["id"]]
    finally:
        copy.close()
    # The daemon went on working meanwhile, and still does.
    assert (await daemon.get("/readyz")).status == 200

    again = run("backup", "-c", str(daemon.config_path), str(dest), cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr == f"webhookd backup: {dest} exists; add --force to replace it\n"
    dest.chmod(0o644)
    forced = run("backup", "-c", str(daemon.config_path), str(dest), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_backup_refuses_what_it_cannot_copy(tmp_path: Path) -> None:
    result = run("backup", str(tmp_path / "b.db"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "webhookd backup: no database at ./webhookd.db\n"
    assert not (tmp_path / "webhookd.db").exists()  # not created by looking for it
    sqlite3.connect(tmp_path / "webhookd.db").close()
    result = run("backup", str(tmp_path / "missing" / "b.db"), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"webhookd backup: cannot write in {tmp_path / 'missing'}: No such file or directory\n"
    )
    for database in (
        "postgresql://webhookd:pw@127.0.0.1/webhookd",
        "host=127.0.0.1 dbname=webhookd password=pw",
    ):
        with pytest.raises(BackupError) as caught:
            backup(database, str(tmp_path / "b.db"))
        assert str(caught.value).startswith("the database is PostgreSQL: back it up with pg_dump")
        assert "pw" not in str(caught.value)
    assert not (tmp_path / "b.db").exists()
