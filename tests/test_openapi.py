"""The OpenAPI document: complete, and true to the running server (checked by schemathesis)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

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
        if path.startswith(("/console", "/portal")):
            continue  # the console's HTML pages are not the API
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


def _fields(schema: Any, where: str) -> list[tuple[str, Any]]:
    """Every property of `schema`, at any depth, as (dotted place, its schema)."""
    found: list[tuple[str, Any]] = []
    if not isinstance(schema, dict):
        return found
    for name, prop in schema.get("properties", {}).items():
        found.append((f"{where}.{name}", prop))
        found.extend(_fields(prop, f"{where}.{name}"))
    found.extend(_fields(schema.get("items"), f"{where}[]"))
    for alt in schema.get("oneOf", []) + schema.get("anyOf", []):
        found.extend(_fields(alt, where))
    return found


def test_every_operation_has_a_tag_a_dotted_id_and_a_description() -> None:
    doc = document()
    tags = {t["name"] for t in doc["tags"]}
    assert all(t.get("description") for t in doc["tags"])
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            where = f"{method.upper()} {path}"
            assert re.fullmatch(r"[a-z_]+\.[a-z_]+", operation["operationId"]), where
            assert len(operation["tags"]) == 1 and operation["tags"][0] in tags, where
            assert operation["description"].strip(), where
            for param in operation.get("parameters", []):
                assert param.get("description"), f"{where} parameter {param['name']}"
    ids = {op["operationId"] for methods in doc["paths"].values() for op in methods.values()}
    assert {"endpoints.create", "events.publish", "deliveries.retry"} <= ids


def test_every_schema_and_field_has_a_description() -> None:
    schemas = document()["components"]["schemas"]
    missing = [name for name, schema in schemas.items() if not schema.get("description")]
    for name, schema in schemas.items():
        missing.extend(
            place for place, prop in _fields(schema, name) if not prop.get("description")
        )
    assert not missing, "no description: " + ", ".join(missing)
    # Fields that share a schema constant still say what each of them is.
    delivery = schemas["Delivery"]["properties"]
    assert delivery["tenant"]["description"] != delivery["next_attempt_at"]["description"]
