"""Secrets never leak: not in logs at any level, not in error messages, not in lists."""

from __future__ import annotations

import base64
from typing import Any

from tests.conftest import Daemon
from tests.test_receiver_auth import TokenServer

API_KEY = "apikey-" + "Q" * 40
SCOPED_KEY = "scoped-" + "R" * 40


async def test_a_debug_run_logs_no_secret(make_daemon: Any, make_receiver: Any) -> None:
    ok = await make_receiver()
    failing = await make_receiver(default=500)
    d: Daemon = await make_daemon(
        {
            "log": {"level": "debug", "format": "json"},
            "api_keys": [
                {"name": "admin", "key_env": "TEST_WEBHOOKD_KEY"},
                {"name": "acme", "key": SCOPED_KEY, "tenant": "acme"},
            ],
            "delivery": {"retry_schedule_s": [0.1]},
        },
        env={"TEST_WEBHOOKD_KEY": API_KEY},
    )
    d.api_key = API_KEY
    secrets: list[str] = [API_KEY, SCOPED_KEY]
    std = "whsec_" + base64.b64encode(b"s" * 32).decode()
    secrets.append(std)
    await d.endpoint(ok.url, secret=std)
    token = "tok-" + "T" * 30
    secrets.append(token)
    await d.endpoint(ok.url, secret=token, signature={"scheme": "token"})
    hmac_secret = "hmac-" + "H" * 30
    secrets.append(hmac_secret)
    ep = await d.endpoint(failing.url, secret=hmac_secret, signature={"scheme": "hmac-sha256"})
    generated = await d.endpoint(ok.url)
    secrets.append(generated["secret"])
    rotated = (await d.post(f"/v1/endpoints/{generated['id']}/secret/rotate", {})).json["secret"]
    secrets.append(rotated)
    # Receiver auth: a password, a bearer token, a client secret, and the access token
    # fetched with it (added to the secrets once issued).
    tokens = await TokenServer().start()
    auth_secrets = ["auth-pw-" + "K" * 30, "auth-bearer-" + "L" * 30, "auth-client-" + "M" * 30]
    secrets.extend(auth_secrets)
    secrets.append(base64.b64encode(f"u:{auth_secrets[0]}".encode()).decode())
    await d.endpoint(ok.url, auth={"type": "basic", "username": "u", "password": auth_secrets[0]})
    await d.endpoint(ok.url, auth={"type": "bearer", "token": auth_secrets[1]})
    oauth = {"type": "oauth2", "token_url": tokens.url(), "client_id": "c"}
    await d.endpoint(ok.url, auth={**oauth, "client_secret": auth_secrets[2]})
    # Bad secrets in requests: the error names the field, never the value.
    bad = "whsec_notbase64!!" + "X" * 20
    r = await d.post("/v1/endpoints", {"url": ok.url, "secret": bad})
    assert r.status == 422 and bad not in r.body.decode()
    secrets.append(bad)
    r = await d.get("/v1/endpoints", key="wrong-" + "W" * 40)
    assert r.status == 401 and "W" * 40 not in r.body.decode()
    secrets.append("wrong-" + "W" * 40)
    # Traffic: deliveries, failures and retries at debug level.
    for _ in range(3):
        await d.publish()
    await ok.wait_for(18)
    await tokens.stop()
    assert tokens.issued, "no access token was fetched"
    secrets.extend(token for token, _ in tokens.issued)
    await failing.wait_for(6)
    await d.wait_status(
        (await d.get(f"/v1/deliveries?endpoint_id={ep['id']}")).json["data"][0]["id"], "failed"
    )
    # Token-scheme attempts show the token redacted.
    r = await d.get("/v1/deliveries?limit=250")
    for item in r.json["data"]:
        full = (await d.get(f"/v1/deliveries/{item['id']}")).json
        text = str(full)
        for s in secrets:
            assert s not in text, "a secret appears in a delivery record"
    # Lists never carry secrets.
    r = await d.get("/v1/endpoints?limit=250")
    for s in secrets:
        assert s not in r.body.decode()
    assert await d.stop() == 0
    log = d.log_text()
    assert '"level":"debug"' in log, "the run did not log at debug level"
    for s in secrets:
        assert s not in log, f"a secret appears in the log: {s[:8]}…"
