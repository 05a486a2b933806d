"""`webhookd dev` and `webhookd trigger` as real processes, stopped with real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until
from tests.test_cli_client import cli, free_port

ATTEMPT_LINE = re.compile(
    r"^\d\d:\d\d:\d\d  (?P<type>\S+)\s+(?P<delivery>dlv_\S+)  (?P<status>\S+)\s+"
    r"(?P<ms>\d+) ms  (?P<verdict>.*)$",
    re.MULTILINE,
)


class Dev:
    """`webhookd dev --port N` with its output in files."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = tmp / "dev.out"
        self.err = tmp / "dev.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "webhookd", "dev", "--port", str(self.port), *args],
                stdout=out,
                stderr=err,
                cwd=tmp,
            )

    def text(self) -> str:
        return self.out.read_text()

    def attempt_line(self) -> re.Match[str] | None:
        return ATTEMPT_LINE.search(self.text())

    async def started(self) -> None:
        await wait_until(lambda: "one line per attempt" in self.text(), 30, "dev to start")

    def child_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too: it only waits for its parent (already dead) to be reaped.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_dev_prints_one_line_per_attempt_and_stops_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    dev = Dev(tmp_path)
    try:
        await dev.started()
        [daemon_pid] = dev.child_pids()
        assert f"API on {dev.url}" in dev.text()
        env = {"WEBHOOKD_URL": dev.url}
        code, out, err = await cli("trigger", "order.created", env=env)
        assert code == 0, err
        match = re.match(r"published (evt_\S+) \(order\.created\) to 1 endpoint\n", out)
        assert match is not None, out
        assert re.search(r"^dlv_\S+\s+(pending|delivering|delivered)\s", out, re.MULTILINE), out
        await wait_until(lambda: ATTEMPT_LINE.search(dev.text()), 20, "an attempt line")
        line = ATTEMPT_LINE.search(dev.text())
        assert line is not None
        assert line["type"] == "order.created" and line["status"] == "200"
        assert line["verdict"] == "signature OK (standard)"
        code, out, _ = await cli("trigger", "order.paid", "--payload", '{"n": 2}', env=env)
        assert code == 0 and "(order.paid) to 1 endpoint" in out
        await wait_until(
            lambda: len(ATTEMPT_LINE.findall(dev.text())) == 2, 20, "the second attempt line"
        )

        dev.proc.send_signal(sig)
        assert dev.proc.wait(timeout=30) == 0
        await wait_until(lambda: _gone(daemon_pid), 10, "the daemon to exit")
        assert "forced" not in dev.err.read_text()  # one SIGTERM: the daemon drained
        code, _, err = await cli("healthcheck", "--url", dev.url)
        assert code == 1 and "connection refused" in err
    finally:
        dev.close()


async def test_dev_keeps_a_given_database_and_reuses_its_endpoint(tmp_path: Path) -> None:
    db = tmp_path / "dev.db"
    ids = []
    for run in range(2):
        dev = Dev(tmp_path, "--database", str(db))
        try:
            await dev.started()
            found = re.search(r"is endpoint (ep_\S+)", dev.text())
            assert found is not None
            ids.append(found.group(1))
            code, _, _ = await cli("trigger", "order.paid", env={"WEBHOOKD_URL": dev.url})
            assert code == 0
            await wait_until(dev.attempt_line, 20, "an attempt line")
            line = ATTEMPT_LINE.search(dev.text())
            assert line is not None and line["verdict"] == "signature OK (standard)", run
            dev.proc.send_signal(signal.SIGTERM)
            assert dev.proc.wait(timeout=30) == 0
        finally:
            dev.close()
    assert ids[0] == ids[1]
    assert db.exists()


async def test_trigger_uses_the_example_payload_or_an_empty_one(tmp_path: Path) -> None:
    dev = Dev(tmp_path)
    try:
        await dev.started()
        env = {"WEBHOOKD_URL": dev.url}
        code, out, err = await cli("trigger", "call.completed", "--json", env=env)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["payload"] == {} and doc["deliveries"] == 1
        assert [d["event_id"] for d in doc["delivery_list"]] == [doc["id"]]
        code, out, err = await cli("trigger", "order.creatd", env=env)
        assert (code, out) == (1, "")
        assert err.strip().endswith("did you mean order.created for order.creatd?"), err
    finally:
        dev.close()


def test_dev_and_trigger_are_documented_in_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhookd", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    )
    assert "dev " in result.stdout and "trigger " in result.stdout
