"""A client generated from the served OpenAPI document by a maintained generator
(openapi-python-client, from the `test` extra) builds, and publishes through a real daemon.

The generator runs offline: the document is fetched from the daemon, and the generator's
post-generation hooks (formatters it would look for on PATH) are turned off.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Daemon, Receiver

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "webhookd_generated"


def generate(doc: dict[str, object], tmp_path: Path) -> Path:
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(doc))
    config = tmp_path / "generator.yaml"
    config.write_text("post_hooks: []\n")
    out = tmp_path / "gen" / PACKAGE
    result = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(out),
            "--meta",
            "none",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A warning means a part of the document the generator could not turn into code.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    return out


async def test_a_generated_client_builds_and_publishes(
    daemon: Daemon, receiver: Receiver, tmp_path: Path
) -> None:
    doc = (await daemon.get("/openapi.json")).json
    out = await asyncio.to_thread(generate, doc, tmp_path)
    # One module per tag, named after the dotted operation ids.
    assert {p.name for p in (out / "api").iterdir() if p.is_dir()} >= {
        "events",
        "endpoints",
        "deliveries",
        "event_types",
    }
    assert (out / "api" / "events" / "events_publish.py").exists()

    sys.path.insert(0, str(out.parent))
    try:
        pkg = importlib.import_module(PACKAGE)
        create = importlib.import_module(f"{PACKAGE}.api.endpoints.endpoints_create")
        publish = importlib.import_module(f"{PACKAGE}.api.events.events_publish")
        get_event = importlib.import_module(f"{PACKAGE}.api.events.events_get")
        models = importlib.import_module(f"{PACKAGE}.models")
        client = pkg.Client(base_url=daemon.base)
        async with client as c:
            ep = await create.asyncio(
                client=c, body=models.EndpointCreate.from_dict({"url": receiver.url})
            )
            assert isinstance(ep, models.Endpoint) and ep.secret.startswith("whsec_")
            body = models.PublishRequest.from_dict(
                {"type": "call.completed", "payload": {"call_id": "c-1"}}
            )
            published = await publish.asyncio(client=c, body=body, idempotency_key="gen-1")
            assert isinstance(published, models.PublishResult)
            assert published.id == "gen-1" and published.deliveries == 1
            [got] = await receiver.wait_for(1)
            assert got.headers["webhook-id"] == "gen-1"
            event = await get_event.asyncio(client=c, event_id="gen-1")
            assert isinstance(event, models.EventDetail)
            assert event.payload.to_dict() == {"call_id": "c-1"}
    finally:
        sys.path.remove(str(out.parent))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]
