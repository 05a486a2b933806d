"""The OpenAPI document: complete, and true to the running server (checked by schemathesis)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import Daemon
from webhookd.api import create_app
from webhookd.api.context import State
from webhookd.api.openapi import document
from webhookd.config import Config
from webhookd.store.sqlite import SQLiteStore


def test_document_lists_every_route_the_server_has(tmp_path: Path) -> None:
    app = create_app(State(config=Config(), store=SQLiteStore(str(tmp_path / "x.db"))))
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "OPTIONS") or path is None:
            continue
        served.add((route.method.lower(), path))
    doc = document()
    documented = {(m, p) for p, methods in doc["paths"].items() for m in methods}
    assert served == documented
    assert doc["openapi"].startswith("3.1")
    ids = [op["operationId"] for methods in doc["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))


async def test_served_document(daemon: Daemon) -> None:
    r = await daemon.get("/openapi.json", key="")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json == document()


async def test_schemathesis_finds_no_5xx_and_no_mismatch(
    make_daemon: object, tmp_path: Path
) -> None:
    """Property-based run against the live server: any 5xx, any status code not in the
    document, or any response body that does not match its schema fails the test."""
    d: Daemon = await make_daemon({"api_keys": [{"name": "ci", "key": "s" * 40}]})  # type: ignore[operator]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{d.base}/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance,negative_data_rejection",
        "--phases",
        "examples,fuzzing,stateful",
        "--max-examples",
        "25",
        "--seed",
        "20261122",
        "--workers",
        "2",
        "-H",
        f"Authorization: Bearer {'s' * 40}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "passed" in text
    assert "Traceback" not in d.log_text()
