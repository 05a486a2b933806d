"""`webhookd serve --listen` over the file's `listen`, across a real SIGHUP: the reload
keeps the override instead of reporting the file's value as a change that needs a restart,
and shutdown leaves alone the unix socket the file names, which the daemon never used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, wait_until


class OverridingDaemon(Daemon):
    """The conftest daemon, started with `--listen` on the command line."""

    def __init__(self, tmp: Path, config: dict[str, Any], listen: str) -> None:
        super().__init__(tmp, config)
        self.listen = listen

    async def start(self, timeout: float = 20.0) -> Daemon:
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "webhookd", "serve"),
                *("-c", str(self.config_path), "--listen", self.listen),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        match = await wait_until(self._started, timeout, "the daemon's startup line")
        self.base = f"http://{match}"
        await wait_until(self._ready, timeout, "/readyz")
        return self


@pytest.fixture
async def overriding(tmp_path: Path) -> AsyncIterator[OverridingDaemon]:
    # A short directory: a unix socket path is limited to about 100 bytes.
    sock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"whk-{os.getpid()}-{id(tmp_path)}"
    sock_dir.mkdir()
    other = sock_dir / "api.sock"
    config = {"listen": f"unix:{other}", "database": str(tmp_path / "webhookd.db")}
    d = OverridingDaemon(tmp_path, config, "127.0.0.1:0")
    try:
        yield d
    finally:
        await d.close()
        other.unlink(missing_ok=True)
        sock_dir.rmdir()


async def test_a_reload_keeps_the_listen_override(overriding: OverridingDaemon) -> None:
    other = Path(overriding.config["listen"].removeprefix("unix:"))
    # Another daemon's socket, say, at the address the file names.
    other.write_text("not ours")
    await overriding.start()
    assert (await overriding.get("/readyz")).status == 200

    overriding.signal(signal.SIGHUP)
    await wait_until(lambda: "event=reloaded" in overriding.log_text(), 10, "the reload")
    log = overriding.log_text()
    assert "needs_restart=none" in log
    assert "reload_needs_restart" not in log
    assert (await overriding.get("/readyz")).status == 200  # still on the same address

    assert await overriding.stop() == 0
    assert other.read_text() == "not ours"  # shutdown removed no socket it never used
