"""The signature schemes: pure functions from (secret, id, timestamp, body) to headers.

`standard` is Standard Webhooks v1: `v1` HMAC-SHA256 signatures, or `v1a` Ed25519 ones
with `signature.algorithm: ed25519` (webhookd.ed25519); the others are the styles SaaS
providers document ("compute HMAC-SHA256 of the raw body with your secret"), so receivers
written from those docs verify webhookd's requests unchanged.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from webhookd import ed25519

SCHEMES = ("standard", "hmac-sha256", "hmac-sha256-timestamped", "token", "none")
# Of the standard scheme: `v1` HMAC signatures with a whsec_ secret, or `v1a` Ed25519 ones
# with a whsk_ private key (see webhookd.ed25519).
ALGORITHMS = ("hmac-sha256", "ed25519")
SECRET_PREFIX = "whsec_"
DEFAULT_HEADERS = {
    "hmac-sha256": "X-Webhook-Signature",
    "hmac-sha256-timestamped": "X-Webhook-Signature",
    "token": "X-Webhook-Token",
}
DEFAULT_TIMESTAMP_HEADER = "X-Webhook-Timestamp"
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
REDACTED = "[redacted]"


@dataclass(frozen=True)
class SignatureSpec:
    scheme: str = "standard"
    header: str | None = None
    timestamp_header: str | None = None
    algorithm: str = "hmac-sha256"  # of the standard scheme only

    @property
    def signature_header(self) -> str | None:
        if self.scheme == "standard":
            return "webhook-signature"
        return self.header or DEFAULT_HEADERS.get(self.scheme)

    @property
    def ts_header(self) -> str | None:
        if self.scheme == "standard":
            return "webhook-timestamp"
        if self.scheme == "hmac-sha256-timestamped":
            return self.timestamp_header or DEFAULT_TIMESTAMP_HEADER
        return None

    def header_names(self) -> tuple[str, ...]:
        """Every header this scheme sets (lower case), for reserved-name checks."""
        if self.scheme == "none":
            return ()
        names = [n for n in (self.signature_header, self.ts_header) if n]
        if self.scheme == "standard":
            names.append("webhook-id")
        return tuple(n.lower() for n in names)

    def to_json(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {"scheme": self.scheme}
        if self.scheme == "standard":
            out["algorithm"] = self.algorithm
        if self.scheme in DEFAULT_HEADERS:
            out["header"] = self.signature_header
        if self.scheme == "hmac-sha256-timestamped":
            out["timestamp_header"] = self.ts_header
        return out


def generate_secret(algorithm: str = "hmac-sha256") -> str:
    """A new secret: whsec_ (HMAC), or a whsk_ private key for `ed25519`."""
    if algorithm == "ed25519":
        return ed25519.generate_private_key()
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


def standard_secret_problem(secret: str, algorithm: str) -> str | None:
    """Why `secret` cannot sign the standard scheme with `algorithm`, or None if it can."""
    try:
        if algorithm == "ed25519":
            ed25519.private_key(secret)
        else:
            decode_standard_secret(secret)
    except ValueError as exc:
        return str(exc)
    return None


def algorithm_of(secret: str) -> str:
    """The standard-scheme algorithm a secret is spelt for: whsk_ keys are Ed25519."""
    return "ed25519" if ed25519.is_private_key(secret) else "hmac-sha256"


@functools.lru_cache(maxsize=1024)
def decode_standard_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; ValueError unless it is whsec_ + base64 of 24-64 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a standard-scheme secret starts with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ must be base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the secret must encode 24-64 bytes, got {len(key)}")
    return key


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = decode_standard_secret(secret)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.digest(key, signed, "sha256")
    return "v1," + base64.b64encode(digest).decode("ascii")


def hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _standard_or_v1a(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    # Each secret signs by its own kind, so that during the grace of a rotation from one
    # algorithm to the other both the `v1` and the `v1a` signatures are sent (Standard
    # Webhooks allows both in one header), and receivers of either kind keep verifying.
    if ed25519.is_private_key(secret):
        return ed25519.sign_v1a(secret, msg_id, timestamp, body)
    return standard_signature(secret, msg_id, timestamp, body)


def sign(
    spec: SignatureSpec, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The signature headers for one request. `secrets[0]` is the current secret; the rest
    are rotated-out secrets still in their grace period (only `standard` uses them)."""
    if spec.scheme == "none":
        return {}
    current = secrets[0]
    if spec.scheme == "standard":
        if len(secrets) == 1:
            sigs = _standard_or_v1a(current, msg_id, timestamp, body)
        else:
            sigs = " ".join([_standard_or_v1a(s, msg_id, timestamp, body) for s in secrets])
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sigs,
        }
    header = spec.signature_header
    if header is None:
        raise ValueError(f"unknown signature scheme {spec.scheme!r}")
    if spec.scheme == "hmac-sha256":
        return {header: hex_hmac(current, body)}
    if spec.scheme == "hmac-sha256-timestamped":
        ts_header = spec.ts_header or DEFAULT_TIMESTAMP_HEADER
        return {
            header: hex_hmac(current, f"{timestamp}.".encode() + body),
            ts_header: str(timestamp),
        }
    if spec.scheme == "token":
        return {header: current}
    raise ValueError(f"unknown signature scheme {spec.scheme!r}")


def redact(spec: SignatureSpec, headers: Mapping[str, str]) -> dict[str, str]:
    """The headers as the delivery log shows them: a `token` secret is never stored."""
    out = dict(headers)
    if spec.scheme == "token" and spec.signature_header:
        for name in out:
            if name.lower() == spec.signature_header.lower():
                out[name] = REDACTED
    return out


def _standard_request(
    headers: Mapping[str, str], now_s: int | None, tolerance_s: int
) -> tuple[str, int, list[str]] | None:
    """A Standard Webhooks request's webhook-id, timestamp and signature entries, or None
    when the id is missing, the timestamp unreadable, or (with `now_s`) not fresh."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    ts_text = lower.get("webhook-timestamp", "")
    if not msg_id or not (ts_text.isascii() and ts_text.isdigit()):
        return None
    timestamp = int(ts_text)
    if now_s is not None and abs(now_s - timestamp) > tolerance_s:
        return None
    return msg_id, timestamp, lower.get("webhook-signature", "").split(" ")


def verify_standard(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_s: int | None = None,
    tolerance_s: int = 300,
) -> bool:
    """Check a Standard Webhooks request: any `v1,` signature matching, timestamp fresh."""
    request = _standard_request(headers, now_s, tolerance_s)
    if request is None:
        return False
    msg_id, timestamp, candidates = request
    try:
        expected = standard_signature(secret, msg_id, timestamp, body)
    except ValueError:
        return False
    return any(
        hmac.compare_digest(expected.encode(), candidate.encode())
        for candidate in candidates
        if candidate.startswith("v1,")
    )


def verify_ed25519(
    key: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_s: int | None = None,
    tolerance_s: int = 300,
) -> bool:
    """Check a Standard Webhooks request against a `whpk_` public key: any `v1a,`
    signature verifying, timestamp fresh (when `now_s` is given)."""
    request = _standard_request(headers, now_s, tolerance_s)
    return request is not None and ed25519.verify_v1a(key, *request[:2], body, request[2])
