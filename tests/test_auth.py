"""Authentication on every route: a real daemon with keys configured."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Daemon
from webhookd.api.openapi import document

KEY = "a" * 40
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/metrics"}


async def test_every_route_but_the_public_ones_needs_a_key(make_daemon: Any) -> None:
    d: Daemon = await make_daemon({"api_keys": [{"name": "k", "key": KEY}]})
    checked = 0
    for path, methods in document()["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x_1", path)
        for method in methods:
            body = b"{}" if method in ("post", "patch") else None
            no_key = await d.request(method.upper(), concrete, data=body, key="")
            wrong = await d.request(method.upper(), concrete, data=body, key="b" * 40)
            if path in PUBLIC:
                assert no_key.status == 200, (method, path, no_key)
            else:
                assert no_key.status == 401, (method, path, no_key)
                assert wrong.status == 401, (method, path, wrong)
                assert no_key.json["error"] == "unauthorized"
                checked += 1
            good = await d.request(method.upper(), concrete, data=body, key=KEY)
            assert good.status != 401, (method, path, good)
    assert checked >= 19


async def test_bearer_scheme_is_case_insensitive_and_key_exact(make_daemon: Any) -> None:
    d: Daemon = await make_daemon({"api_keys": [{"name": "k", "key": KEY}]})
    ok = await d.get("/v1/endpoints", key="", headers={"Authorization": f"bearer {KEY}"})
    assert ok.status == 200
    for header in (f"Basic {KEY}", KEY, f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer "):
        r = await d.get("/v1/endpoints", key="", headers={"Authorization": header})
        assert r.status == 401, header


def test_short_key_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api_keys:\n  - name: k\n    key: tooshort-secret\n")
    proc = subprocess.run(
        [sys.executable, "-m", "webhookd", "check-config", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 78
    assert "api_keys[0].key" in proc.stderr and "32" in proc.stderr
    assert "tooshort-secret" not in proc.stderr
