"""`signature.algorithm` in the endpoints API: which kind of secret an endpoint holds, and
how it changes.

The standard scheme signs with an HMAC `whsec_` secret (`v1` signatures) or an Ed25519
`whsk_` private key (`v1a`). An endpoint's algorithm is the kind of its current secret,
so it changes only together with the secret:

- at create, `signature.algorithm` picks the kind of the generated secret; without it, a
  given secret's own kind decides (as with Svix, a `whsk_` key means Ed25519), and a
  generated one is HMAC;
- a PATCH that leaves `algorithm` out keeps the endpoint's; one that names the other
  algorithm is a 422 pointing to the rotation, since no secret of the new kind exists yet;
- `POST …/secret/rotate` with `{"algorithm": …}` (a new key generated) or a secret of the
  other kind switches. During the grace period the old secret keeps signing by its own
  kind, so deliveries carry both a `v1` and a `v1a` signature and receivers of either
  kind keep verifying while they move to the new key.

Leaving the standard scheme while the secret is an Ed25519 private key is refused: every
other scheme would share the key with the receiver. Rotate to an HMAC secret first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from webhookd import ed25519, signing
from webhookd.api.validate import Loc, Problems
from webhookd.store.interface import Endpoint
from webhookd.timefmt import now_ms, to_rfc3339

ROTATE_HINT = (
    'POST /v1/endpoints/{id}/secret/rotate with {{"algorithm": "{algorithm}"}} (a new '
    "secret is generated; the old one keeps signing during grace_s)"
)


def check_algorithm(value: Any, scheme: str, loc: Loc, problems: Problems) -> str | None:
    """A given `algorithm`: one of ALGORITHMS, and of the standard scheme only."""
    if value not in signing.ALGORITHMS:
        problems.add(loc, f"expected one of {', '.join(signing.ALGORITHMS)}")
        return None
    if scheme != "standard":
        problems.add(
            loc,
            f"the {scheme} scheme has no algorithm; ed25519 (Standard Webhooks v1a) is of the "
            "standard scheme only",
        )
        return None
    algorithm: str = value
    return algorithm


def settle(
    body: dict[str, Any], spec: signing.SignatureSpec, current: Endpoint | None
) -> signing.SignatureSpec:
    """`spec` with the algorithm it will have after a create or PATCH with `body`."""
    if spec.scheme != "standard":
        return dataclasses.replace(spec, algorithm="hmac-sha256")
    given = body.get("signature")
    if isinstance(given, dict) and given.get("algorithm") is not None:
        return spec  # as given (checked by check_algorithm)
    if current is None:
        secret = body.get("secret")
        kind = signing.algorithm_of(secret) if isinstance(secret, str) else "hmac-sha256"
    elif "signature" in body:
        kind = signing.algorithm_of(current.secret)
    else:
        return spec
    return dataclasses.replace(spec, algorithm=kind)


def secret_message(algorithm: str, reason: str, secret: str) -> str:
    """Why `secret` was refused for the standard scheme with `algorithm` (never quoting it)."""
    if algorithm == "ed25519":
        return f"expected {ed25519.KEY_FORM}: {reason}"
    hint = " (a whsk_ key signs with signature.algorithm ed25519)"
    return (
        f"expected whsec_ followed by base64 of 24-64 bytes: {reason}"
        f"{hint if ed25519.is_private_key(secret) else ''}"
    )


def scheme_change_problem(current: Endpoint, spec: signing.SignatureSpec) -> tuple[Loc, str] | None:
    """Why a PATCH may not give `current` the signature `spec`, or None."""
    before = current.signature
    if spec.scheme != "standard":
        if before.scheme == "standard" and before.algorithm == "ed25519":
            return (
                ("body", "signature", "scheme"),
                f"the endpoint's secret is an Ed25519 private key, which the {spec.scheme} "
                "scheme would share with the receiver; first rotate to an HMAC secret: "
                + ROTATE_HINT.format(id=current.id, algorithm="hmac-sha256"),
            )
        return None
    if (before.scheme == "standard" and before.algorithm == spec.algorithm) or (
        signing.standard_secret_problem(current.secret, spec.algorithm) is None
    ):
        return None
    want = "whsk_ Ed25519 private key" if spec.algorithm == "ed25519" else "whsec_ secret"
    if before.scheme != "standard":
        return (
            ("body", "signature", "scheme"),
            f"the current secret is not a {want}; rotate it with a new {want} first",
        )
    return (
        ("body", "signature", "algorithm"),
        f"the endpoint's secret is not a {want}, and a PATCH does not change secrets; to "
        f"sign with {spec.algorithm}, rotate to one: "
        + ROTATE_HINT.format(id=current.id, algorithm=spec.algorithm),
    )


def rotated_spec(body: dict[str, Any], ep: Endpoint, problems: Problems) -> signing.SignatureSpec:
    """The endpoint's signature after `POST …/secret/rotate` with `body`: `algorithm`, else
    a given secret's kind, else the endpoint's own algorithm."""
    spec = ep.signature
    value = body.get("algorithm")
    if value is not None:
        algorithm = check_algorithm(value, spec.scheme, ("body", "algorithm"), problems)
        return dataclasses.replace(spec, algorithm=algorithm) if algorithm else spec
    secret = body.get("secret")
    if spec.scheme == "standard" and isinstance(secret, str):
        return dataclasses.replace(spec, algorithm=signing.algorithm_of(secret))
    return spec


def _public_key(spec: signing.SignatureSpec, secret: str) -> str | None:
    if spec.scheme != "standard":
        return None
    return ed25519.public_key_or_none(secret)


def secret_fields(spec: signing.SignatureSpec, secret: str) -> dict[str, Any]:
    out: dict[str, Any] = {"secret": secret}
    public = _public_key(spec, secret)
    if public is not None:
        out["public_key"] = public
    return out


def secret_answer(ep: Endpoint) -> dict[str, Any]:
    """GET …/secret: the secret, its public key (Ed25519), and the rotated-out secrets still
    signing (with their public keys: receivers may still trust them until they expire)."""
    now = now_ms()
    previous = []
    for p in ep.previous_secrets:
        if p.expires_at <= now:
            continue
        item: dict[str, Any] = {"expires_at": to_rfc3339(p.expires_at)}
        public = _public_key(ep.signature, p.secret)
        if public is not None:
            item["public_key"] = public
        previous.append(item)
    return {**secret_fields(ep.signature, ep.secret), "previous_secrets": previous}


def public_key(ep: Endpoint) -> str | None:
    """The endpoint's public key (Ed25519 endpoints), for pages that show it."""
    return _public_key(ep.signature, ep.secret)
