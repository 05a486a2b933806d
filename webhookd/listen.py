"""`webhookd listen`: a local receiver for development.

Prints each delivery it receives (type, id, body) and whether its signature verifies
against `--secret` (HMAC `v1`, or the other schemes) or `--public-key` (Ed25519 `v1a`; a
`whsk_` private key given as `--secret` verifies with its public key). A request whose
signature does not verify is answered 401, so webhookd retries it as a receiver in
production would make it; a verified one is answered `--status`, or, with `--forward-to
URL`, passed on to the local application there, whose answer (status, headers, body)
becomes the answer to webhookd. The secret or key is checked at start: a listener that
can never verify anything is a mistake to report, not to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from webhookd import ed25519, signing

LISTEN_SCHEMES = ("standard", "hmac-sha256", "hmac-sha256-timestamped", "token")
MIN_SHARED_SECRET_CHARS = 16
FORWARD_TIMEOUT_S = 30.0
# Hop-by-hop and framing headers are the two connections' own business.
NOT_FORWARDED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
)


class SecretError(ValueError):
    """A --secret that cannot verify anything, with the reason."""


def check_public_key(key: str, scheme: str) -> None:
    """Raise SecretError unless `key` is a whpk_ Ed25519 public key of the standard scheme."""
    if scheme != "standard":
        raise SecretError(f"public keys verify the standard scheme only, not {scheme}")
    try:
        ed25519.public_key(key)
    except ValueError as exc:
        raise SecretError(
            f"{exc} (expected {ed25519.PUBLIC_KEY_FORM}, as GET /v1/endpoints/{{id}}/secret "
            "shows it in public_key)"
        ) from None


def verifying_key(secret: str | None, scheme: str) -> str | None:
    """The public key a `--secret` whsk_ private key verifies with (standard scheme)."""
    if secret is None or scheme != "standard" or not ed25519.is_private_key(secret):
        return None
    return ed25519.public_key_of(secret)


def check_secret(secret: str, scheme: str) -> None:
    """Raise SecretError unless `secret` can be an endpoint's secret for `scheme`."""
    if scheme == "standard" and ed25519.is_private_key(secret):
        try:
            ed25519.private_key(secret)
        except ValueError as exc:
            raise SecretError(f"{exc} (expected {ed25519.KEY_FORM})") from None
    elif scheme == "standard":
        try:
            signing.decode_standard_secret(secret)
        except ValueError as exc:
            raise SecretError(
                f"{exc} (a standard-scheme secret is whsec_ + base64 of 24-64 bytes, as "
                "POST /v1/endpoints returns it; for an hmac-sha256 or token endpoint pass "
                "--scheme)"
            ) from None
    elif len(secret) < MIN_SHARED_SECRET_CHARS:
        raise SecretError(
            f"a {scheme} secret has at least {MIN_SHARED_SECRET_CHARS} characters, "
            f"got {len(secret)}"
        )


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: not checked (no --secret)
    text: str


def verify_public(key: str, headers: Mapping[str, str], body: bytes) -> Verdict:
    """Whether a `v1a` signature of the request verifies with the public key `key`."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "webhook-signature" not in lower:
        return Verdict(False, "signature MISSING (no webhook-signature header)")
    ok = signing.verify_ed25519(key, headers, body, now_s=int(time.time()))
    return Verdict(ok, f"signature {'OK' if ok else 'INVALID'} (standard, ed25519 v1a)")


def verify(
    secret: str | None,
    scheme: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    public_key: str | None = None,
) -> Verdict:
    """Whether the request is signed with `secret` under `scheme` (or verifies with
    `public_key`), and a line saying so."""
    public_key = public_key or verifying_key(secret, scheme)
    if public_key is not None:
        return verify_public(public_key, headers, body)
    if secret is None:
        return Verdict(None, "signature not checked (no --secret or --public-key)")
    lower = {k.lower(): v for k, v in headers.items()}
    if scheme == "standard":
        if "webhook-signature" not in lower:
            return Verdict(False, "signature MISSING (no webhook-signature header)")
        ok = signing.verify_standard(secret, headers, body, now_s=int(time.time()))
        return Verdict(ok, f"signature {'OK' if ok else 'INVALID'} (standard)")
    if scheme == "token":
        ok = any(hmac.compare_digest(v.encode(), secret.encode()) for v in lower.values())
        return Verdict(ok, f"signature {'OK' if ok else 'INVALID'} (token)")
    name = next((n for n in lower if "signature" in n), None)
    if name is None:
        return Verdict(False, f"signature MISSING (no signature header for {scheme})")
    message = body
    if scheme == "hmac-sha256-timestamped":
        ts_name = next((n for n in lower if "timestamp" in n), None)
        message = f"{lower.get(ts_name or '', '')}.".encode() + body
    expected = signing.hex_hmac(secret, message)
    ok = hmac.compare_digest(expected, lower[name].strip().lower())
    return Verdict(ok, f"signature {'OK' if ok else 'INVALID'} ({scheme}, {name})")


@dataclass
class Received:
    """What one request was, for whoever watches the listener (`webhookd dev`)."""

    event_id: str
    event_type: str
    verdict: Verdict
    status: int


Observer = Callable[[Received], None]


def _describe(request: web.Request, body: bytes) -> tuple[str, str]:
    """The event type and the body, pretty-printed when it is JSON."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "?", body.decode("utf-8", errors="replace")
    event_type = str(doc.get("type", "?")) if isinstance(doc, dict) else "?"
    return event_type, orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


@dataclass
class Listener:
    """The receiving application: verify, print, answer or forward."""

    secret: str | None
    scheme: str = "standard"
    status: int = 200
    public_key: str | None = None  # whpk_…: verify Ed25519 v1a signatures
    forward_to: str | None = None
    out: TextIO | None = None  # None: print nothing (dev prints its own lines)
    observer: Observer | None = None
    _session: ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.receive)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def receive(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        verdict = verify(
            self.secret, self.scheme, request.headers, body, public_key=self.public_key
        )
        event_type, pretty = _describe(request, body)
        event_id = request.headers.get("webhook-id", "?")
        lines = [
            f"--> {request.method} {request.path_qs}  type={event_type}  id={event_id}",
            f"    {verdict.text}",
        ]
        if verdict.ok is False:
            response = web.Response(status=401, text="signature does not verify\n")
        elif self.forward_to is not None:
            response, line = await self._forward(request, body)
            lines.append(f"    {line}")
        else:
            ok = self.status < 300
            response = web.Response(status=self.status, text="ok\n" if ok else "error\n")
        lines.append(f"<-- {response.status}")
        if self.out is not None:
            print("\n".join(lines) + f"\n{pretty}\n", file=self.out, flush=True)
        if self.observer is not None:
            self.observer(Received(event_id, event_type, verdict, response.status))
        return response

    async def _forward(self, request: web.Request, body: bytes) -> tuple[web.Response, str]:
        """Pass the request to --forward-to; its answer, and a line describing it."""
        assert self.forward_to is not None
        target = self.forward_to.rstrip("/") + request.path_qs
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=FORWARD_TIMEOUT_S))
        try:
            async with self._session.request(
                request.method, target, data=body, headers=headers, allow_redirects=False
            ) as resp:
                answer = await resp.read()
                kept = {k: v for k, v in resp.headers.items() if k.lower() not in NOT_FORWARDED}
                text = answer[:200].decode("utf-8", errors="replace").strip()
                line = f"forwarded to {target}: {resp.status} {' '.join(text.split())}".rstrip()
                return web.Response(status=resp.status, body=answer, headers=kept), line
        except (ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            line = f"forwarded to {target}: no answer ({reason}); answering 502"
            return web.Response(status=502, text=f"--forward-to failed: {reason}\n"), line


async def run(host: str, port: int, listener: Listener) -> int:
    runner = web.AppRunner(listener.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        print(f"webhookd listen: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    extra = (
        f", forwarding verified requests to {listener.forward_to}" if listener.forward_to else ""
    )
    print(f"listening on http://{host}:{port}/{extra} (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0
