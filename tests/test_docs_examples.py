"""Every shell and Python example of README.md and docs/ runs as written, against a real
daemon on a free port of 127.0.0.1.

What runs: fenced blocks whose info string is `sh` or `python`, in document order; the
`sh` blocks of one document share one bash session (`set -euo pipefail`), so a variable
set in one block is there in the next, as when a reader pastes them into one terminal.
Other blocks (`console` transcripts, `yaml`, `json`, `js`, plain output) are not run.

Markers, an HTML comment on the line right above a block (invisible on a rendered page):

- `<!-- example: skip (why) -->`: not run. For the few that install software, touch a
  production host's paths, or are fragments of a receiver that only make sense inside one.
- `<!-- example: needs TOOL -->`: run when TOOL is on PATH, else left out (and named in
  the test's output). `needs postgresql` (no such command) is never run here: such a
  block needs a PostgreSQL server set up as its document says (docs/postgresql.md;
  tests/test_pg_*.py run the same steps against a throwaway cluster).
- `<!-- example: background "TEXT" -->`: a long-running command (a daemon, a receiver),
  started and left running until the document is done; the next block starts once its
  output shows TEXT.
- `<!-- example: stop "TEXT" -->`: before the block, the running background command that
  contains TEXT gets SIGINT (the reader's Ctrl-C in its terminal) and has exited; the
  quick start stops its receiver this way to force a retry.

The only rewrites, so that examples written for a reader's machine run beside other tests:
`127.0.0.1:8080` becomes the test daemon's address and port `9000` (the quick start's
receiver) a free port; `webhookd serve` gets `--listen` with that address; `curl` fails on
an HTTP error status (a shell function adds `--fail-with-body`), so an example that gets
an error answer fails here instead of printing it. The examples run in a fresh directory
holding this checkout's `etc/` and a `.venv/bin/` whose `webhookd` and `python` are the
ones under test, with WEBHOOKD_URL set to the daemon.

A document other than the README (whose quick start starts its own daemon) gets a daemon
on `etc/dev.yaml` whose deliveries go through a closed local port as their proxy: the
examples' hosts (customer.example.com, …) are never resolved, and nothing leaves 127.0.0.1.
docs/architecture.md is not run: its one block is the README's test command, which would
run this test again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import ROOT, Daemon, wait_until
from tests.test_cli_client import free_port

DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
NOT_RUN = {"docs/architecture.md"}
RUN = ("sh", "python")
MARKER_RE = re.compile(r"^<!-- example: (.*?) -->$")
BLOCK_TIMEOUT_S = 90.0
PRELUDE = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    code: str
    marker: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the marker right above it."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    marker = ""
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        match = MARKER_RE.match(text)
        if match is not None:
            marker = match.group(1)
        elif text.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            code = "\n".join(lines[i + 1 : end])
            found.append(Block(doc, i + 1, text[3:].strip(), code, marker))
            marker, i = "", end
        elif text:
            marker = ""
        i += 1
    return found


def rewrite(code: str, api_port: int, receiver_port: int) -> str:
    code = code.replace("127.0.0.1:8080", f"127.0.0.1:{api_port}")
    code = re.sub(r"\b9000\b", str(receiver_port), code)
    return re.sub(r"(webhookd serve\b.*)", rf"\1 --listen 127.0.0.1:{api_port}", code)


@dataclass
class Workspace:
    """A fresh directory to run examples in, and the processes they started."""

    dir: Path
    env: dict[str, str]
    api_port: int
    receiver_port: int
    background: list[tuple[subprocess.Popen[bytes], Path]]
    shell: subprocess.Popen[str] | None = None
    shell_out: Path | None = None
    ran: int = 0

    async def run(self, block: Block) -> None:
        code = rewrite(block.code, self.api_port, self.receiver_port)
        if block.marker.startswith("stop"):
            await self._stop(block)
        if block.marker.startswith("background"):
            await self._background(block, code)
        elif block.lang == "python":
            result = subprocess.run(
                [sys.executable, "-c", code],
                cwd=self.dir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
                check=False,
            )
            assert result.returncode == 0, f"{block.where}:\n{result.stdout}{result.stderr}"
        else:
            await self._shell(block, code)
        self.ran += 1

    async def _background(self, block: Block, code: str) -> None:
        ready = re.search(r'"([^"]+)"', block.marker)
        assert ready is not None, f"{block.where}: background needs the text to wait for"
        out = self.dir / f"background-{block.line}.out"
        with open(out, "wb") as f:
            proc = subprocess.Popen(
                ["bash", "-c", code],
                cwd=self.dir,
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background.append((proc, out))

        def started() -> bool:
            assert proc.poll() is None, f"{block.where} exited:\n{out.read_text()}"
            return ready.group(1) in out.read_text()

        await wait_until(started, BLOCK_TIMEOUT_S, f"{block.where} to print {ready.group(1)}")

    async def _stop(self, block: Block) -> None:
        text = re.search(r'"([^"]+)"', block.marker)
        assert text is not None, f"{block.where}: stop needs the command's text"
        running = [
            p for p, _ in self.background if p.poll() is None and text.group(1) in str(p.args)
        ]
        assert len(running) == 1, f"{block.where}: {len(running)} running commands match"
        os.killpg(running[0].pid, signal.SIGINT)
        await wait_until(lambda: running[0].poll() is not None, BLOCK_TIMEOUT_S, "Ctrl-C")

    async def _shell(self, block: Block, code: str) -> None:
        if self.shell is None:
            self.shell_out = self.dir / "shell.out"
            with open(self.shell_out, "w") as f:
                self.shell = subprocess.Popen(
                    ["bash", "--noprofile", "--norc"],
                    cwd=self.dir,
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            self._send(PRELUDE)
        script = self.dir / f"block-{block.line}.sh"
        script.write_text(code + "\n")
        token = f"__example_{block.line}_done__"
        # Its own stdin is /dev/null: the shell reads the examples from its stdin.
        self._send(f"source {script.name} </dev/null\necho; echo {token}\n")
        shell, out = self.shell, self.shell_out
        assert shell is not None and out is not None

        def done() -> bool:
            text = out.read_text()
            assert shell.poll() is None, f"{block.where} failed:\n{text[-4000:]}"
            return token in text

        await wait_until(done, BLOCK_TIMEOUT_S, f"{block.where} to finish")

    def _send(self, text: str) -> None:
        assert self.shell is not None and self.shell.stdin is not None
        self.shell.stdin.write(text)
        self.shell.stdin.flush()

    def close(self) -> None:
        if self.shell is not None:
            if self.shell.stdin is not None:
                self.shell.stdin.close()
            self.shell.wait(timeout=10)
        for proc, _ in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def workspace(tmp: Path) -> Workspace:
    """A directory with etc/ and .venv/bin/{webhookd,python} of the code under test."""
    tmp.mkdir(parents=True)
    (tmp / "etc").symlink_to(ROOT / "etc")
    bin_dir = tmp / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, args in (("webhookd", "-m webhookd "), ("python", ""), ("python3", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args}"$@"\n')
        shim.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    api_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")},
        "PATH": path,
        "WEBHOOKD_URL": f"http://127.0.0.1:{api_port}",
        "PYTHONUNBUFFERED": "1",
    }
    return Workspace(tmp, env, api_port, free_port(), [])


async def dev_daemon(tmp: Path, port: int) -> Daemon:
    """A daemon on etc/dev.yaml, delivering through a closed local proxy port."""
    config = yaml.safe_load((ROOT / "etc" / "dev.yaml").read_text())
    config["listen"] = f"127.0.0.1:{port}"
    config["database"] = str(tmp / "docs.db")
    config["delivery"] = {"proxy": f"http://127.0.0.1:{free_port()}"}
    daemon = Daemon(tmp / "daemon", {})
    daemon.tmp.mkdir()
    daemon.config = config
    return await daemon.start()


@pytest.fixture
async def space(tmp_path: Path) -> AsyncIterator[Workspace]:
    ws = workspace(tmp_path / "examples")
    yield ws
    ws.close()


def runnable(doc: str) -> tuple[list[Block], list[str]]:
    """The blocks to run, and what was left out because a tool is missing."""
    run, missing = [], []
    for block in blocks(doc):
        if block.lang not in RUN or block.marker.startswith("skip"):
            continue
        if block.marker.startswith("needs "):
            tool = block.marker.split()[1]
            if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
                missing.append(f"{block.where} (needs {tool})")
                continue
        run.append(block)
    return run, missing


async def api_get(space: Workspace, path: str) -> Any:
    url = f"http://127.0.0.1:{space.api_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def delivery(space: Workspace, event_type: str, status: str) -> Any:
    """The newest delivery of `event_type` once it has `status`, with its attempts."""

    async def newest() -> Any:
        page = await api_get(space, f"/v1/deliveries?event_type={event_type}&limit=1")
        row = page["data"][0]
        return row if row["status"] == status else None

    row = await wait_until(newest, 20, f"the {event_type} delivery to be {status}")
    return await api_get(space, f"/v1/deliveries/{row['id']}")


async def test_readme_quick_start_runs_as_written(space: Workspace) -> None:
    todo, missing = runnable("README.md")
    assert not missing
    markers = [b.marker.split()[0] for b in todo if b.marker]
    assert markers == ["background", "background", "stop", "background"]
    for block in todo:
        await space.run(block)
    assert space.ran == len(todo) == 10  # the last: the Ed25519 receiver, standalone
    # A verified delivery: the first receiver printed it, its signature checked.
    first = space.background[1][1].read_text()
    assert "type=order.created" in first and "signature OK (standard)" in first
    # A forced retry: refused while the receiver was stopped, then sent by hand.
    retried = await delivery(space, "order.created", "delivered")
    tries = [(a["trigger"], a["error_kind"]) for a in retried["attempts"]]
    assert tries[0] == ("scheduled", "connection_refused") and tries[-1] == ("manual", None)
    # Paused then resumed: nothing attempted until the endpoint was resumed.
    held = await delivery(space, "order.paid", "delivered")
    endpoint = await api_get(space, f"/v1/endpoints/{held['endpoint_id']}")
    assert not endpoint["paused"]
    assert [a["started_at"] >= endpoint["updated_at"] for a in held["attempts"]] == [True]
    second = space.background[2][1]
    await wait_until(lambda: "type=order.paid" in second.read_text(), 20, "order.paid")
    assert second.read_text().count("signature OK (standard)") == 2


@pytest.mark.parametrize("doc", [d for d in DOCS if d != "README.md" and d not in NOT_RUN])
async def test_docs_examples_run_as_written(
    doc: str, space: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    todo, missing = runnable(doc)
    if not todo:
        assert not missing
        return
    daemon = await dev_daemon(space.dir.parent, space.api_port)
    try:
        for block in todo:
            await space.run(block)
        assert "Traceback" not in daemon.log_text()
    finally:
        await daemon.close()
    if missing:
        with capsys.disabled():
            print(f"\n{doc}: not run here: {', '.join(missing)}")


def test_markers_are_known_and_every_document_is_covered() -> None:
    known = ("skip (", "needs ", 'background "', 'stop "')
    for doc in DOCS:
        for block in blocks(doc):
            assert not block.marker or block.marker.startswith(known), block.where
            if block.marker.startswith("skip"):
                assert block.marker.endswith(")"), f"{block.where}: say why it is skipped"
    assert {"README.md", "docs/client.md", "docs/api.md", "docs/receiving.md"} <= set(DOCS)
